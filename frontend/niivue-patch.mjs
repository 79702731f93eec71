// Changes to NiiVue's ES module build, applied by frontend/vendor.sh to the vendored copy (the
// pinned @niivue/niivue; each change must match exactly once, or vendoring fails loudly).
//
// 1. The gradient texture only when a render shader samples it. NiiVue rebuilds it (a blur and a
//    Sobel pass over the whole volume, with a blocking framebuffer check per slice) every time the
//    background volume's texture is rebuilt; only the gradient-lit render shaders read it
//    (setVolumeRenderIllumination switches to them and rebuilds the background, which makes it
//    then). The viewer's 2D planes and its default 3D render never do: on a PC without a GPU this
//    was half of the work of showing a level, and 100-200 ms of main-thread blocking (issue 21).
import { readFileSync, writeFileSync } from "node:fs";

const CHANGES = [
  {
    what: "gradient texture only for the gradient-lit render shaders",
    from: `    if (layer === 0) {
      this.volumeTexture = outTexture;
      this.gradientTexture = gradientGL({`,
    to: `    if (layer === 0) {
      this.volumeTexture = outTexture;
    }
    if (layer === 0 && (this.renderShader === this.renderGradientShader || this.renderShader === this.renderGradientValuesShader)) {
      this.gradientTexture = gradientGL({`,
  },
];

const path = process.argv[2];
let text = readFileSync(path, "utf8");
for (const change of CHANGES) {
  const found = text.split(change.from).length - 1;
  if (found !== 1) {
    console.error(`niivue-patch.mjs: "${change.what}" matches ${found} times in ${path}; the pinned NiiVue changed`);
    process.exit(1);
  }
  text = text.replace(change.from, change.to);
}
writeFileSync(path, text);
console.log(`niivue-patch.mjs: ${CHANGES.length} change(s) applied to ${path}`);
