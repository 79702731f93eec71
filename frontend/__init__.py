"""The researcher's browser: Django pages and small ES modules, NiiVue served as a static file.

Modules: ``labs`` (the session's lab), ``results`` (what the pages show of the service's rows),
``layers`` (the viewer's volumes: previews, full resolution, regions), ``previews`` (pure numpy +
nibabel downsampling and cropping), ``pictures`` (QC PNGs), ``views/`` (pages, files, downloads).
Static code lives in ``static/frontend/js`` (one module per page; ``charts.js`` draws inline SVG);
``vendor.sh`` installs NiiVue from npm into ``static/vendor/niivue/``.
"""
