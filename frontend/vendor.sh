#!/bin/sh
# Install the browser dependencies pinned in package-lock.json and copy NiiVue's self-contained
# ES module build to frontend/static/vendor/niivue/niivue.js (gitignored), where the templates
# import it with {% static 'vendor/niivue/niivue.js' %}. Nothing is fetched from a CDN at run time.
# Run from anywhere; `make install` calls it.
set -eu
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
npm ci --no-audit --no-fund
src="node_modules/@niivue/niivue/dist/index.js"
if [ ! -f "$src" ]; then
    echo "vendor.sh: $src is missing; the pinned @niivue/niivue no longer ships its ESM build there" >&2
    exit 1
fi
dest="frontend/static/vendor/niivue"
mkdir -p "$dest"
# The source map is not shipped, so drop the comment that points at it (avoids a 404 per page).
sed '/^\/\/# sourceMappingURL=/d' "$src" > "$dest/niivue.js"
# A few changes for the viewer's speed without a GPU (frontend/niivue-patch.mjs says which and why).
node frontend/niivue-patch.mjs "$dest/niivue.js"
cp node_modules/@niivue/niivue/package.json "$dest/package.json"
version="$(node -p "require('./node_modules/@niivue/niivue/package.json').version")"
echo "vendor.sh: NiiVue $version copied to $dest/niivue.js"
