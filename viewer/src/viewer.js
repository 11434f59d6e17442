// The PERSONA avatar viewer page: Spark (three.js Gaussian splatting) draws the avatar's Gaussians;
// skinning.js poses them every motion frame (linear blend skinning of the canonical Gaussians with
// the avatar's own weights, plus the per-frame canonical offsets where the data has them).
//
// URL parameters (all optional):
//   camera=FILE.json  a fixed pinhole camera, persona's convention (OpenCV axes, world -> camera
//                     x_c = R x + t): {"K": 3x3, "R": 3x3, "t": [3], "width", "height"}; the
//                     canvas takes that size and the orbit controls are off
//   motion=NAME       the motion to start with (default: the data's start motion)
//   frame=I           the frame to start on;  play=0|1 (default 1);  turntable=0|1 (default 0)
// Hooks for tests and scripts: window.__persona_ready, __persona_fps, __persona_show(name, i),
// __persona_settled(), __persona_capture() (PNG data URL of the canvas), __persona_posed_means(ids).

import * as THREE from "three";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";
import { ExtSplats, SparkRenderer, SplatMesh, utils } from "@sparkjsdev/spark";
import { fetchOk, loadAvatar } from "./avatar.js";
import { jointTransforms, skinMeans, AFFINE, NUM_JOINTS } from "./skinning.js";

// persona's splat kernel (persona/render: projection.py, compositing.py) in Spark's terms
const KERNEL = {
  maxStdDev: 3.0, // SIGMA_CUTOFF: alpha is 0 beyond 3 standard deviations
  blurAmount: 0.1, // EPS2D: screen-space filter (px^2) with opacity compensation
  preBlurAmount: 0.0, // no blur without compensation
  minAlpha: 1.0 / 255.0, // ALPHA_MIN
  sortRadial: false, // front-to-back by camera depth, as persona sorts
  accumExtSplats: true, // float32 centres all the way (the default packs them as float16)
};
const WHITE = 0xffffff; // persona's renders composite on white
const NEAR = 0.01; // metres: persona's Camera.near
const FAR = 100.0; // metres: persona's Camera.far
const TURNTABLE_SECONDS = 8.0; // one orbit of the turntable
const FPS_WINDOW_MS = 500; // the frame-rate readout averages over this window
const SETTLE_FRAMES = 3; // frames drawn after a pose change before a capture may happen
const QUAT_W = 1.0; // persona's Gaussians are isotropic: identity rotation (x, y, z, w = 1)

const params = new URLSearchParams(location.search);
const fpsElement = document.getElementById("fps");
const statusElement = document.getElementById("status");

function setStatus(text) {
  statusElement.textContent = text;
}

// Spark's extended splats (float32 centres) from the canonical Gaussians.
function buildSplats(avatar) {
  const count = avatar.numGaussians;
  const { maxSplats } = utils.getTextureSize(count);
  const arrays = [new Uint32Array(maxSplats * 4), new Uint32Array(maxSplats * 4)];
  const { means, scales, opacities, rgb } = avatar;
  for (let i = 0; i < count; i++) {
    utils.encodeExtSplat(arrays, i, means[3 * i], means[3 * i + 1], means[3 * i + 2],
      scales[3 * i], scales[3 * i + 1], scales[3 * i + 2], 0, 0, 0, QUAT_W, opacities[i],
      rgb[3 * i], rgb[3 * i + 1], rgb[3 * i + 2]);
  }
  const splats = new ExtSplats({ extArrays: arrays, numSplats: count });
  // centre i lives at floats [4 i, 4 i + 3) of the first array (ExtSplats' layout)
  return { splats, centres: new Float32Array(arrays[0].buffer) };
}

// three.js camera from persona's pinhole camera (OpenCV axes: x right, y down, z forward).
function fixedCamera(spec) {
  const [W, H] = [spec.width, spec.height];
  const [[fx, , cx], [, fy, cy]] = spec.K;
  const camera = new THREE.PerspectiveCamera(50, W / H, NEAR, FAR);
  const R = spec.R;
  const t = spec.t;
  // camera -> world: rotation R^T diag(1, -1, -1) (three looks down -z with y up), centre -R^T t
  const centre = [0, 1, 2].map((i) => -(R[0][i] * t[0] + R[1][i] * t[1] + R[2][i] * t[2]));
  const world = new THREE.Matrix4().set(
    R[0][0], -R[1][0], -R[2][0], centre[0],
    R[0][1], -R[1][1], -R[2][1], centre[1],
    R[0][2], -R[1][2], -R[2][2], centre[2],
    0, 0, 0, 1);
  world.decompose(camera.position, camera.quaternion, camera.scale);
  camera.updateMatrixWorld(true);
  // projection straight from K: pixel u = fx x / z + cx (centres at +0.5), v downwards
  camera.projectionMatrix.set(
    2 * fx / W, 0, 1 - 2 * cx / W, 0,
    0, 2 * fy / H, 2 * cy / H - 1, 0,
    0, 0, -(FAR + NEAR) / (FAR - NEAR), -2 * FAR * NEAR / (FAR - NEAR),
    0, 0, -1, 0);
  camera.projectionMatrixInverse.copy(camera.projectionMatrix).invert();
  camera.updateProjectionMatrix = () => {}; // keep K's projection on resize
  return camera;
}

function orbitCamera(orbit, canvas) {
  const camera = new THREE.PerspectiveCamera(orbit.fov_deg, innerWidth / innerHeight, NEAR, FAR);
  const target = new THREE.Vector3(...orbit.target);
  camera.position.set(target.x, target.y, target.z + orbit.distance); // SMPL-X front: +z
  const controls = new OrbitControls(camera, canvas);
  controls.target.copy(target);
  controls.autoRotateSpeed = 60.0 / TURNTABLE_SECONDS; // OrbitControls: 60 / speed s per orbit
  controls.update();
  return { camera, controls };
}

class FpsMeter {
  constructor() {
    this.frames = 0;
    this.since = performance.now();
    this.value = 0;
  }

  tick(now) {
    this.frames += 1;
    if (now - this.since >= FPS_WINDOW_MS) {
      this.value = (1000 * this.frames) / (now - this.since);
      this.frames = 0;
      this.since = now;
      window.__persona_fps = this.value;
      fpsElement.textContent = `${this.value.toFixed(1)} fps`;
    }
  }
}

async function main() {
  const avatar = await loadAvatar("avatar.json");
  const cameraSpec = params.has("camera")
    ? await (await fetchOk(params.get("camera"))).json() : null;

  const renderer = new THREE.WebGLRenderer({ antialias: false });
  renderer.setClearColor(WHITE, 1);
  renderer.setPixelRatio(cameraSpec ? 1 : devicePixelRatio);
  document.getElementById("stage").appendChild(renderer.domElement);
  const scene = new THREE.Scene();
  const spark = new SparkRenderer({ renderer, ...KERNEL });
  scene.add(spark);
  const { splats, centres } = buildSplats(avatar);
  const mesh = new SplatMesh({ extSplats: splats });
  scene.add(mesh);

  let camera;
  let controls = null;
  if (cameraSpec) {
    camera = fixedCamera(cameraSpec);
    renderer.setSize(cameraSpec.width, cameraSpec.height);
  } else {
    ({ camera, controls } = orbitCamera(avatar.orbit, renderer.domElement));
    renderer.setSize(innerWidth, innerHeight);
    addEventListener("resize", () => {
      camera.aspect = innerWidth / innerHeight;
      camera.updateProjectionMatrix();
      renderer.setSize(innerWidth, innerHeight);
    });
  }

  // ---------------------------------------------------------------- posing
  const transforms = new Float64Array(NUM_JOINTS * AFFINE);
  const count = avatar.numGaussians;
  const stats = { poses: 0, skinMs: 0, frames: 0, renderMs: 0 }; // window.__persona_stats
  window.__persona_stats = stats;
  const state = { motion: null, frame: -1, time: 0, playing: params.get("play") !== "0",
                  framesSincePose: 0 };

  function showFrame(motion, frame) {
    const started = performance.now();
    jointTransforms(avatar.skeleton, motion.poses, frame * 3 * NUM_JOINTS, motion.transl,
                    frame * 3, transforms);
    const offsets = motion.offsets
      ? motion.offsets.subarray(frame * count * 3, (frame + 1) * count * 3) : null;
    skinMeans(avatar.means, avatar.weights, transforms, offsets, centres, 4, 0);
    splats.textures[0].needsUpdate = true;
    mesh.needsUpdate = true;
    stats.poses += 1;
    stats.skinMs += performance.now() - started;
    state.motion = motion;
    state.frame = frame;
    state.framesSincePose = 0;
    slider.max = String(motion.numFrames - 1);
    slider.value = String(frame);
    frameLabel.textContent = `${frame + 1} / ${motion.numFrames}`;
  }

  // ---------------------------------------------------------------- controls
  const select = document.getElementById("motion");
  const slider = document.getElementById("frame");
  const frameLabel = document.getElementById("frame-label");
  const playButton = document.getElementById("play");
  const turntable = document.getElementById("turntable");
  for (const motion of avatar.motions) {
    const option = document.createElement("option");
    option.value = motion.name;
    option.textContent = motion.offsets ? `${motion.name} (with offsets)` : motion.name;
    select.appendChild(option);
  }
  const byName = (name) => avatar.motions.find((m) => m.name === name);
  const setPlaying = (playing) => {
    state.playing = playing;
    playButton.textContent = playing ? "Pause" : "Play";
  };
  select.addEventListener("change", () => {
    state.time = 0;
    showFrame(byName(select.value), 0);
  });
  slider.addEventListener("input", () => {
    setPlaying(false);
    showFrame(state.motion, Number(slider.value));
  });
  playButton.addEventListener("click", () => {
    state.time = state.frame;
    setPlaying(!state.playing);
  });
  turntable.checked = params.get("turntable") === "1" && controls !== null;
  turntable.disabled = controls === null;

  const start = byName(params.get("motion") ?? avatar.startMotion) ?? avatar.motions[0];
  const startFrame = Math.min(Math.max(Number(params.get("frame") ?? 0), 0), start.numFrames - 1);
  select.value = start.name;
  state.time = startFrame;
  showFrame(start, startFrame);
  setPlaying(state.playing);

  // ---------------------------------------------------------------- loop
  const fps = new FpsMeter();
  let last = performance.now();
  renderer.setAnimationLoop((now) => {
    const dt = Math.max(0, (now - last) / 1000);
    last = now;
    if (state.playing) {
      state.time += dt * state.motion.fps;
      const frame = Math.floor(state.time) % state.motion.numFrames;
      if (frame !== state.frame) showFrame(state.motion, frame);
    }
    if (controls) {
      controls.autoRotate = turntable.checked;
      controls.update(dt);
    }
    const renderStart = performance.now();
    renderer.render(scene, camera);
    stats.renderMs += performance.now() - renderStart;
    stats.frames += 1;
    state.framesSincePose += 1;
    fps.tick(now);
    if (!window.__persona_ready) {
      window.__persona_ready = true;
      setStatus(`${count} Gaussians, ${avatar.motions.length} motions`);
    }
  });

  // ---------------------------------------------------------------- hooks
  window.__persona_show = (name, frame) => {
    setPlaying(false);
    const motion = byName(name);
    if (!motion) throw new Error(`no motion ${name}`);
    select.value = name;
    showFrame(motion, frame);
  };
  window.__persona_play = (playing) => setPlaying(playing);
  window.__persona_settled = () =>
    state.framesSincePose >= SETTLE_FRAMES && !spark.sorting && !spark.sortDirty;
  window.__persona_capture = () => {
    renderer.render(scene, camera);
    return renderer.domElement.toDataURL("image/png");
  };
  window.__persona_posed_means = (indices) =>
    indices.map((i) => [centres[4 * i], centres[4 * i + 1], centres[4 * i + 2]]);
}

main().catch((error) => {
  setStatus(`error: ${error.message}`);
  window.__persona_error = String(error.stack ?? error);
  throw error;
});
