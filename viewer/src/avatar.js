// Reads the avatar data that `persona view` writes (persona/export/viewer.py): avatar.json (layout)
// and avatar.bin (little-endian arrays at the offsets the JSON gives). No three.js, no DOM.

export const DATA_FORMAT = "persona_viewer_data"; // avatar.json "format"
export const DATA_VERSION = 1; // avatar.json "version" this reader understands

const TYPED = {
  float32: Float32Array, float64: Float64Array, uint32: Uint32Array, int32: Int32Array,
  uint8: Uint8Array,
};

function view(buffer, layout, name) {
  const spec = layout.arrays[name];
  if (!spec) throw new Error(`avatar.json: missing array '${name}'`);
  const Type = TYPED[spec.dtype];
  if (!Type) throw new Error(`avatar.json: array '${name}' has unknown dtype ${spec.dtype}`);
  const count = spec.shape.reduce((a, b) => a * b, 1);
  return new Type(buffer, spec.offset, count);
}

// Parse an already fetched layout (avatar.json) and binary (avatar.bin ArrayBuffer).
export function parseAvatar(layout, buffer) {
  if (layout.format !== DATA_FORMAT || layout.version !== DATA_VERSION) {
    throw new Error(`avatar.json: expected format ${DATA_FORMAT} version ${DATA_VERSION}, ` +
                    `got ${layout.format} ${layout.version}`);
  }
  const get = (name) => view(buffer, layout, name);
  const motions = layout.motions.map((m) => ({
    name: m.name, fps: m.fps, numFrames: m.num_frames,
    poses: get(m.poses), transl: get(m.transl),
    offsets: m.offsets ? get(m.offsets) : null, // [T, N, 3] canonical offsets, or none
  }));
  return {
    numGaussians: layout.num_gaussians,
    means: get("means"), scales: get("scales"), opacities: get("opacities"), rgb: get("rgb"),
    weights: { indptr: get("weight_indptr"), joints: get("weight_joints"),
               values: get("weight_values") },
    skeleton: { parents: get("parents"), restJoints: get("rest_joints"),
                poseMean: get("pose_mean"), canonicalInverse: get("canonical_inverse") },
    motions, startMotion: layout.start_motion, orbit: layout.orbit, info: layout,
  };
}

// fetch() that fails with the address and HTTP status instead of parsing an error page
export async function fetchOk(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status} ${response.statusText}`);
  return response;
}

export async function loadAvatar(url = "avatar.json") {
  const layout = await (await fetchOk(url)).json();
  const binaryUrl = new URL(layout.binary, new URL(url, location.href));
  const binary = await (await fetchOk(binaryUrl)).arrayBuffer();
  return parseAvatar(layout, binary);
}
