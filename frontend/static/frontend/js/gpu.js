// Volumes changed in NiiVue without freezing the page. NiiVue's updateGLVolume rebuilds its 3D
// textures by drawing every slice of every layer into them; the GPU (in software, SwiftShader, on a
// PC without a usable one) does that work after the call returns, and the canvas's next frame then
// waits for all of it on the main thread (the compositor reads the canvas back): a 2.5 M-voxel
// level held the page for 1-3 s (issue 21). Here a change is made with NiiVue's drawing held (its
// own isBusy flag: drawScene only notes that a frame is due), the page waits for a GPU fence from
// timers, and one frame is drawn once the GPU is done. Input keeps being answered meanwhile; what
// it changes (a slice, the crosshair) is drawn with that frame. Changes that arrive during a wait
// are gathered into one more rebuild.

const POLL_MS = 16;
const GIVE_UP_MS = 5_000; // a fence not signalled by then (a lost context, a browser that never updates it): draw anyway, which waits for the GPU

/** Resolve once the GPU has run every command issued so far, without blocking the main thread. */
export function gpuIdle(gl) {
  const sync = gl.fenceSync(gl.SYNC_GPU_COMMANDS_COMPLETE, 0);
  gl.flush();
  const started = performance.now();
  return new Promise((resolve) => {
    const poll = () => {
      // Chrome refreshes a fence's status between tasks: reading it never waits for the GPU.
      const done = !sync || gl.isContextLost() || gl.getSyncParameter(sync, gl.SYNC_STATUS) === gl.SIGNALED;
      if (done || performance.now() - started > GIVE_UP_MS) {
        if (sync && !gl.isContextLost()) gl.deleteSync(sync);
        resolve();
      } else {
        setTimeout(poll, POLL_MS);
      }
    };
    setTimeout(poll, POLL_MS);
  });
}

const nextFrame = () => new Promise((resolve) => requestAnimationFrame(resolve));

/**
 * The scene updater of one Niivue: ``update(change)`` runs ``change()`` now (it may call NiiVue
 * methods that rebuild textures, such as addVolume or updateGLVolume), or, without one, asks for a
 * rebuild (nv.updateGLVolume, once however many ask during a wait). It resolves once a frame with
 * the change is on its way to the screen; a change that throws rejects it.
 */
export function quietScene(nv) {
  let issued = 0; // changes asked for
  let dirty = false; // a rebuild asked for during a wait
  let settling = null;
  let waiters = [];

  async function settle() {
    let covered = -1;
    let failure = null;
    while (covered < issued) {
      if (dirty) {
        dirty = false;
        try {
          nv.updateGLVolume();
        } catch (error) {
          failure = error;
        }
      }
      covered = issued;
      await gpuIdle(nv.gl);
    }
    nv.isBusy = false;
    settling = null;
    const done = waiters;
    waiters = [];
    try {
      nv.drawScene();
    } catch (error) {
      failure = failure ?? error;
    }
    await nextFrame();
    for (const [resolve, reject] of done) failure ? reject(failure) : resolve();
  }

  return function update(change = null) {
    const promise = new Promise((resolve, reject) => waiters.push([resolve, reject]));
    nv.isBusy = true;
    issued++;
    try {
      if (change) change();
      else if (settling) dirty = true;
      else nv.updateGLVolume();
    } catch (error) {
      waiters.at(-1)[1](error);
    }
    settling ??= settle();
    return promise;
  };
}

/**
 * Keep a viewer alive through a lost WebGL context. A GPU process that crashes or resets (a driver
 * update, a busy machine's software renderer, too many tabs) takes the canvas's context with it:
 * the canvas keeps its last frame and answers nothing more. The browser gives a context back only
 * to a page that prevented the loss; NiiVue's init() then makes its shaders and textures again
 * from the volumes it still holds, and draws. ``hook.contextLosses`` counts them (tests read it);
 * the canvas's data-context says "lost" until the picture is back ("restored").
 */
export function keepThroughContextLoss(nv, hook) {
  const canvas = nv.canvas;
  hook.contextLosses = 0;
  canvas.addEventListener("webglcontextlost", (event) => {
    event.preventDefault();
    hook.contextLosses++;
    canvas.dataset.context = "lost";
  });
  canvas.addEventListener("webglcontextrestored", async () => {
    try {
      await nv.init();
      // init() leaves the drawing's texture at 2x2x2: a correction being drawn lives on in
      // drawBitmap and goes back into a texture of the scan's size.
      if (nv.drawBitmap && nv.back?.dims) {
        const unit = nv.gl.TEXTURE7; // NiiVue's drawing texture unit
        nv.drawTexture = nv.opts.is2DSliceShader ? nv.r8Tex2D(nv.drawTexture, unit, nv.back.dims) : nv.r8Tex(nv.drawTexture, unit, nv.back.dims, true);
        nv.refreshDrawing(true);
      }
      canvas.dataset.context = "restored";
    } catch (error) {
      hook.errors.push(`the picture could not be redrawn after the graphics were reset: ${error}`);
    }
  });
}
