"""The Django app that runs the segmentation library for labs: jobs, model rows, API, exports.

Its app label stays ``inference`` (tables, migrations and permissions keep their names); the
Django-free library it calls is the ``inference`` package."""
