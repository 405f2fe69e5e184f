// Drives two headless Chromium pages, each a JsSIP phone (phone.js), through trioproxy's WebSocket
// transports: alice registers over WSS, bob over WS, alice calls bob, bob answers, media flows between the two
// browsers over loopback, alice hangs up. Prints one JSON object with what each step saw; exit status 0 when
// the run finished (the Python test judges the results), 1 on an error (the JSON carries it).
//
// Usage: node driver.mjs '{"ws": "ws://127.0.0.1:P", "wss": "wss://127.0.0.1:Q", "domain": "127.0.0.1"}'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import esbuild from 'esbuild';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const opts = JSON.parse(process.argv[2] || '{}');
const STEP_MS = opts.stepMs || 15000; // bound of every step
const TOTAL_MS = opts.totalMs || 60000; // bound of the whole run
const CHROMIUM = opts.chromium || '/usr/bin/chromium';

const result = { registered: {}, confirmed: {}, packets: {}, ended: {}, logs: {}, error: null };

function bounded(promise, what, ms = STEP_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
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
    for (const name of ['alice', 'bob']) {
      const page = await browser.newPage();
      page.on('console', (m) => { if (m.type() === 'error') (result.logs[name] ||= []).push(m.text()); });
      await page.goto(`${origin}/`, { timeout: STEP_MS });
      pages[name] = page;
    }
    const alice = pages.alice;
    const bob = pages.bob;
    result.registered.alice = await bounded(
      alice.evaluate(([url, domain]) => window.phone.register(url, 'alice', domain), [opts.wss, opts.domain]),
      'alice REGISTER over WSS',
    );
    result.registered.bob = await bounded(
      bob.evaluate(([url, domain]) => window.phone.register(url, 'bob', domain), [opts.ws, opts.domain]),
      'bob REGISTER over WS',
    );
    if (result.registered.alice !== 200 || result.registered.bob !== 200) return;
    const calling = alice.evaluate((target) => window.phone.call(target), `sip:bob@${opts.domain}`);
    result.confirmed.alice = await bounded(calling, 'alice call confirmed');
    result.confirmed.bob = await bounded(
      bob.waitForFunction(() => window.phone.incoming).then(() => bob.evaluate(() => window.phone.answered())),
      'bob call confirmed',
    );
    // RTP between the browsers: inbound packets on each side, sampled twice.
    for (const name of ['alice', 'bob']) result.packets[name] = [];
    for (let i = 0; i < 2; i++) {
      await sleep(1500);
      for (const name of ['alice', 'bob']) {
        result.packets[name].push(await pages[name].evaluate(() => window.phone.packetsReceived()));
      }
    }
    result.ended.alice = await bounded(alice.evaluate(() => window.phone.hangup()), 'alice BYE');
    result.ended.bob = await bounded(bob.evaluate(() => window.phone.ended()), 'bob sees the BYE');
    for (const name of ['alice', 'bob']) {
      result.logs[`${name}_events`] = await pages[name].evaluate(() => window.phone.log.map((e) => e.what));
      await pages[name].evaluate(() => window.phone.stop());
    }
    await sleep(300); // the un-REGISTERs leave
  } finally {
    if (browser) await browser.close().catch(() => {});
    server.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

const overall = setTimeout(() => {
  result.error = `the run took over ${TOTAL_MS} ms`;
  console.log(JSON.stringify(result));
  process.exit(1);
}, TOTAL_MS);

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
