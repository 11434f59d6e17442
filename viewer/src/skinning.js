// Linear blend skinning of a PERSONA avatar in the browser: the maths of
// persona/export/bundle_loader.py (docs/EXPORT.md, "Posing frame t"), in float64 (JS numbers).
// Pure functions on typed arrays; no three.js, no DOM (node can import this file).
//
//   A(p)  = forward kinematics of R_j = Rodrigues(p_j + pose_mean_j) about rest_joints
//   T_j   = A_j(p) @ canonical_inverse_j, translation += transl                 [55 x 3x4]
//   x'_i  = (sum_k w_ik T_{j_ik}) @ [means_i + offsets[t, i]; 1]               (sparse weights)

export const NUM_JOINTS = 55; // SMPL-X: root, 21 body, jaw, 2 eyes, 2 x 15 fingers
export const AFFINE = 12; // floats of a row-major 3x4 affine transform
const ANGLE_EPSILON = 1e-16; // under the square root of a squared angle (bundle_loader's)

// Rodrigues: axis-angle (x, y, z) -> row-major 3x3 written to out[o .. o + 9).
export function rodrigues(x, y, z, out, o = 0) {
  const angle = Math.sqrt(x * x + y * y + z * z + ANGLE_EPSILON);
  const kx = x / angle;
  const ky = y / angle;
  const kz = z / angle;
  const s = Math.sin(angle);
  const c = 1 - Math.cos(angle);
  // R = I + s K + c K^2, K the skew matrix of the unit axis; K^2 = k k^T - I
  out[o + 0] = 1 + c * (kx * kx - 1);
  out[o + 1] = -s * kz + c * kx * ky;
  out[o + 2] = s * ky + c * kx * kz;
  out[o + 3] = s * kz + c * kx * ky;
  out[o + 4] = 1 + c * (ky * ky - 1);
  out[o + 5] = -s * kx + c * ky * kz;
  out[o + 6] = -s * ky + c * kx * kz;
  out[o + 7] = s * kx + c * ky * kz;
  out[o + 8] = 1 + c * (kz * kz - 1);
}

// a (3x4) @ b (3x4, as 4x4 with last row 0 0 0 1) -> out (3x4); all row-major.
function composeAffine(a, ao, b, bo, out, oo) {
  for (let r = 0; r < 3; r++) {
    const a0 = a[ao + r * 4];
    const a1 = a[ao + r * 4 + 1];
    const a2 = a[ao + r * 4 + 2];
    for (let col = 0; col < 4; col++) {
      out[oo + r * 4 + col] =
        a0 * b[bo + col] + a1 * b[bo + 4 + col] + a2 * b[bo + 8 + col] +
        (col === 3 ? a[ao + r * 4 + 3] : 0);
    }
  }
}

// Canonical -> world transforms [55 x 3x4] (Float64Array(55 * 12)) for a full pose
// (55 x 3 axis-angle, SMPL-X order) and a root translation (3).
// skeleton: {parents: Int32Array(55), restJoints: Float64Array(165),
//            poseMean: Float64Array(165), canonicalInverse: Float64Array(55 * 16)}
export function jointTransforms(skeleton, pose, poseOffset, transl, translOffset,
                                out = new Float64Array(NUM_JOINTS * AFFINE)) {
  const { parents, restJoints, poseMean, canonicalInverse } = skeleton;
  const world = new Float64Array(NUM_JOINTS * AFFINE); // joint frames (zero pose -> posed)
  const local = new Float64Array(AFFINE);
  const rot = new Float64Array(9);
  for (let j = 0; j < NUM_JOINTS; j++) {
    const p = poseOffset + 3 * j;
    rodrigues(pose[p] + poseMean[3 * j], pose[p + 1] + poseMean[3 * j + 1],
              pose[p + 2] + poseMean[3 * j + 2], rot);
    const parent = parents[j];
    for (let r = 0; r < 3; r++) {
      local[r * 4] = rot[r * 3];
      local[r * 4 + 1] = rot[r * 3 + 1];
      local[r * 4 + 2] = rot[r * 3 + 2];
      local[r * 4 + 3] = restJoints[3 * j + r] - (parent >= 0 ? restJoints[3 * parent + r] : 0);
    }
    if (parent < 0) {
      world.set(local, j * AFFINE);
    } else {
      composeAffine(world, parent * AFFINE, local, 0, world, j * AFFINE);
    }
  }
  const relative = new Float64Array(AFFINE);
  for (let j = 0; j < NUM_JOINTS; j++) {
    const w = j * AFFINE;
    for (let r = 0; r < 3; r++) { // SMPL's A: subtract the rotated rest joint
      relative[r * 4] = world[w + r * 4];
      relative[r * 4 + 1] = world[w + r * 4 + 1];
      relative[r * 4 + 2] = world[w + r * 4 + 2];
      relative[r * 4 + 3] = world[w + r * 4 + 3] -
        (world[w + r * 4] * restJoints[3 * j] + world[w + r * 4 + 1] * restJoints[3 * j + 1] +
         world[w + r * 4 + 2] * restJoints[3 * j + 2]);
    }
    composeAffine(relative, 0, canonicalInverse, j * 16, out, w);
    out[w + 3] += transl[translOffset];
    out[w + 7] += transl[translOffset + 1];
    out[w + 11] += transl[translOffset + 2];
  }
  return out;
}

// Posed means: for Gaussian i, (sum_k w_k T_{j_k}) @ (means_i + offsets_i), written as float32
// to out[i * stride + base .. + 3). weights: CSR {indptr: Uint32Array(N + 1),
// joints: Uint8Array(nnz), values: Float32Array(nnz)}; offsets: Float32Array(N * 3) or null.
export function skinMeans(means, weights, transforms, offsets, out, stride = 3, base = 0) {
  const { indptr, joints, values } = weights;
  const count = indptr.length - 1;
  for (let i = 0; i < count; i++) {
    let m0 = 0, m1 = 0, m2 = 0, m3 = 0, m4 = 0, m5 = 0;
    let m6 = 0, m7 = 0, m8 = 0, m9 = 0, m10 = 0, m11 = 0;
    for (let k = indptr[i]; k < indptr[i + 1]; k++) {
      const w = values[k];
      const t = joints[k] * AFFINE;
      m0 += w * transforms[t]; m1 += w * transforms[t + 1];
      m2 += w * transforms[t + 2]; m3 += w * transforms[t + 3];
      m4 += w * transforms[t + 4]; m5 += w * transforms[t + 5];
      m6 += w * transforms[t + 6]; m7 += w * transforms[t + 7];
      m8 += w * transforms[t + 8]; m9 += w * transforms[t + 9];
      m10 += w * transforms[t + 10]; m11 += w * transforms[t + 11];
    }
    let x = means[3 * i], y = means[3 * i + 1], z = means[3 * i + 2];
    if (offsets) {
      x += offsets[3 * i];
      y += offsets[3 * i + 1];
      z += offsets[3 * i + 2];
    }
    const o = i * stride + base;
    out[o] = m0 * x + m1 * y + m2 * z + m3;
    out[o + 1] = m4 * x + m5 * y + m6 * z + m7;
    out[o + 2] = m8 * x + m9 * y + m10 * z + m11;
  }
  return out;
}
