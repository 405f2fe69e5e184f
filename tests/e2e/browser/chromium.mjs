// What the browser drivers (driver.mjs, webrtc_driver.mjs) share: their options (one JSON argument), bounded
// steps, headless Chromium with one JsSIP phone page (page.html + phone.js) per name, the two registrations
// (alice over WSS, bob over WS), the phones' stop, and the run's JSON result on stdout.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import esbuild from 'esbuild';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const opts = JSON.parse(process.argv[2] || '{}');
export const STEP_MS = opts.stepMs || 15000; // bound of every step
const CHROMIUM = opts.chromium || '/usr/bin/chromium';

export function bounded(promise, what, ms = STEP_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Serves the phone page, starts Chromium, opens one page per name (console errors into result.logs[name]),
// runs body(pages) and closes it all, whatever happened.
export async function withPhones(names, result, body) {
  // JsSIP ships CommonJS: bundle it for the page (in memory).
  const bundle = esbuild.buildSync({
    entryPoints: [join(here, 'node_modules/jssip/lib/JsSIP.js')],
    bundle: true,
    format: 'iife',
    globalName: 'JsSIP',
    platform: 'browser',
    write: false,
    logLevel: 'silent',
  }).outputFiles[0].text;
  const files = {
    '/': ['text/html', readFileSync(join(here, 'page.html'))],
    '/jssip.js': ['text/javascript', bundle],
    '/phone.js': ['text/javascript', readFileSync(join(here, 'phone.js'))],
  };
  // The page comes from a server on 127.0.0.1 (a secure context for getUserMedia, and in the same address
  // space as the proxy, so Chromium's local network access checks let its WebSockets through).
  const server = createServer((req, res) => {
    const file = files[new URL(req.url, 'http://127.0.0.1').pathname];
    res.writeHead(file ? 200 : 404, { 'Content-Type': file ? file[0] : 'text/plain' });
    res.end(file ? file[1] : 'not found');
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const origin = `http://127.0.0.1:${server.address().port}`;
  const profile = mkdtempSync(join(tmpdir(), 'trioproxy-chromium-'));
  let browser = null;
  try {
    browser = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      ignoreHTTPSErrors: true,
      timeout: STEP_MS,
      args: [
        '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
        '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
        '--ignore-certificate-errors', '--allow-loopback-in-peer-connection',
      ],
    });
    const pages = {};
    for (const name of names) {
      const page = await browser.newPage();
      page.on('console', (m) => { if (m.type() === 'error') (result.logs[name] ||= []).push(m.text()); });
      await page.goto(`${origin}/`, { timeout: STEP_MS });
      pages[name] = page;
    }
    await body(pages);
  } finally {
    if (browser) await browser.close().catch(() => {});
    server.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

// Alice registers over WSS, bob over WS (result.registered gets each final status); true when both got 200.
export async function registerBoth({ alice, bob }, result) {
  result.registered.alice = await bounded(
    alice.evaluate(([url, domain]) => window.phone.register(url, 'alice', domain), [opts.wss, opts.domain]),
    'alice REGISTER over WSS',
  );
  result.registered.bob = await bounded(
    bob.evaluate(([url, domain]) => window.phone.register(url, 'bob', domain), [opts.ws, opts.domain]),
    'bob REGISTER over WS',
  );
  return result.registered.alice === 200 && result.registered.bob === 200;
}

// Each phone's event names into result.logs, then its stop (the un-REGISTERs leave).
export async function stopPhones(pages, result) {
  for (const [name, page] of Object.entries(pages)) {
    result.logs[`${name}_events`] = await page.evaluate(() => window.phone.log.map((e) => e.what));
    await page.evaluate(() => window.phone.stop());
  }
  await sleep(300);
}

// Runs main() within totalMs, then prints result as one JSON line and exits: 0 when main finished, 1 on an
// error or the overall timeout (result.error says which).
export function run(main, result, totalMs) {
  const overall = setTimeout(() => {
    result.error = `the run took over ${totalMs} ms`;
    console.log(JSON.stringify(result));
    process.exit(1);
  }, totalMs);
  main()
    .then(() => {
      clearTimeout(overall);
      console.log(JSON.stringify(result));
      process.exit(0);
    })
    .catch((err) => {
      clearTimeout(overall);
      result.error = String(err && err.stack ? err.stack : err);
      console.log(JSON.stringify(result));
      process.exit(1);
    });
}
