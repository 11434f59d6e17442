// Drive a `persona view` page in headless Chromium (playwright-core, the system's browser) and
// report on it: a PNG of the canvas at a given motion frame, posed means of some Gaussians, the
// frame rate while playing, and every request that tried to leave 127.0.0.1 (blocked).
//
//   node viewer/tools/capture.mjs --url URL --png OUT.png [--motion NAME --frame I]
//        [--ids 0,5,9] [--width W --height H] [--fps-seconds S] [--chromium /usr/bin/chromium]
// Prints one JSON line: {fps, fps_text, stats, posed_means, blocked, errors, renderer}.

import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

const { values: opts } = parseArgs({
  options: {
    url: { type: "string" },
    png: { type: "string" },
    motion: { type: "string" },
    frame: { type: "string", default: "0" },
    ids: { type: "string", default: "" },
    width: { type: "string", default: "800" },
    height: { type: "string", default: "600" },
    "fps-seconds": { type: "string", default: "3" },
    chromium: { type: "string", default: process.env.PERSONA_CHROMIUM ?? "/usr/bin/chromium" },
    timeout: { type: "string", default: "60" },
  },
});

// headless Chromium on a machine without a GPU: WebGL2 through ANGLE + SwiftShader (software),
// no background traffic (this machine's network is closed), no sandbox (runs as root in CI)
const CHROMIUM_FLAGS = [
  "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
  "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--disable-renderer-backgrounding",
  "--disable-background-timer-throttling", "--disable-backgrounding-occluded-windows",
];
const POLL_MS = 50; // polling interval of the page's hooks
const timeoutMs = Number(opts.timeout) * 1000;

async function waitFor(page, predicate, what) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const error = await page.evaluate(() => window.__persona_error ?? null);
    if (error) throw new Error(`page error: ${error}`);
    if (await page.evaluate(predicate)) return;
    if (Date.now() > deadline) {
      const status = await page.evaluate(() => document.getElementById("status")?.textContent);
      throw new Error(`timed out waiting for ${what} (page status: ${status})`);
    }
    await page.waitForTimeout(POLL_MS);
  }
}

const browser = await chromium.launch({ executablePath: opts.chromium, args: CHROMIUM_FLAGS });
const result = { blocked: [], errors: [] };
try {
  const page = await browser.newPage({
    viewport: { width: Number(opts.width), height: Number(opts.height) }, deviceScaleFactor: 1,
  });
  page.on("pageerror", (error) => result.errors.push(String(error)));
  page.on("console", (message) => {
    if (message.type() === "error") result.errors.push(message.text());
  });
  const local = new URL(opts.url).host;
  await page.route("**/*", (route) => {
    const target = new URL(route.request().url());
    if (target.host === local || target.protocol === "data:" || target.protocol === "blob:") {
      return route.continue();
    }
    result.blocked.push(target.href);
    return route.abort();
  });
  await page.goto(opts.url);
  await waitFor(page, () => window.__persona_ready === true, "the viewer to draw");
  result.renderer = await page.evaluate(() => {
    const gl = document.createElement("canvas").getContext("webgl2");
    const info = gl && gl.getExtension("WEBGL_debug_renderer_info");
    return info ? gl.getParameter(info.UNMASKED_RENDERER_WEBGL) : "unknown";
  });
  if (opts.png) {
    if (opts.motion) {
      await page.evaluate(([name, frame]) => window.__persona_show(name, frame),
                          [opts.motion, Number(opts.frame)]);
    }
    await waitFor(page, () => window.__persona_settled(), "the splat sort to settle");
    const url = await page.evaluate(() => window.__persona_capture());
    writeFileSync(opts.png, Buffer.from(url.split(",")[1], "base64"));
    const ids = opts.ids ? opts.ids.split(",").map(Number) : [];
    result.posed_means = await page.evaluate((list) => window.__persona_posed_means(list), ids);
  }
  await page.evaluate(() => window.__persona_play(true));
  await page.waitForTimeout(Number(opts["fps-seconds"]) * 1000);
  result.fps = await page.evaluate(() => window.__persona_fps ?? null);
  result.stats = await page.evaluate(() => window.__persona_stats);
  result.fps_text = await page.evaluate(() => document.getElementById("fps").textContent);
} catch (error) {
  result.error = String(error.message ?? error);
  process.exitCode = 1;
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
