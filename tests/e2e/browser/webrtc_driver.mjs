// Drives two headless Chromium pages, each a JsSIP phone (phone.js), through trioproxy running
// examples/routes/webrtc.lua with rtpengine: alice registers over WSS, bob over WS, then
//   (a) alice calls bob (browser to browser, media through rtpengine),
//   (b) alice calls carol, a plain SIP phone on UDP (SIPp echoing RTP),
//   (c) a plain SIP phone on UDP calls alice (SIPp playing a recording), alice answers,
// and alice hangs up each call. At each checkpoint it prints one JSON line {"checkpoint": NAME, ...} and waits
// for one line on stdin (the test checks rtpengine meanwhile, or starts the UDP caller). At the end it prints
// one JSON line with everything it saw; exit status 0 when the run finished (the Python test judges the
// results), 1 on an error (the JSON carries it).
//
// Usage: node webrtc_driver.mjs '{"ws": "ws://127.0.0.1:P", "wss": "wss://127.0.0.1:Q", "domain": "127.0.0.1"}'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import esbuild from 'esbuild';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const opts = JSON.parse(process.argv[2] || '{}');
const STEP_MS = opts.stepMs || 15000; // bound of every step
const TOTAL_MS = opts.totalMs || 75000; // bound of the whole run
const CHROMIUM = opts.chromium || '/usr/bin/chromium';
const SAMPLE_MS = opts.sampleMs || 1200; // between two getStats samples

const result = { registered: {}, calls: {}, logs: {}, error: null };

function bounded(promise, what, ms = STEP_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Checkpoints: print, then wait (bounded) for the test's line on stdin.
const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function checkpoint(name, detail = {}) {
  console.log(JSON.stringify({ checkpoint: name, ...detail }));
  const line = await bounded(stdinLines.next(), `the test's answer at ${name}`);
  if (line.done) throw new Error(`stdin closed at ${name}`);
}

// Inbound RTP packets on each page's call, sampled twice.
async function samplePackets(pages) {
  const packets = Object.fromEntries(Object.keys(pages).map((n) => [n, []]));
  for (let i = 0; i < 2; i++) {
    await sleep(SAMPLE_MS);
    for (const [name, page] of Object.entries(pages)) {
      packets[name].push(await page.evaluate(() => window.phone.packetsReceived()));
    }
  }
  return packets;
}

// The SDP each page sent and received on its current call, and its ICE/DTLS state (for diagnostics).
async function sdps(pages) {
  const out = {};
  for (const [name, page] of Object.entries(pages)) {
    out[name] = await page.evaluate(async () => ({
      sdp: window.phone.log.filter((e) => e.what === 'sdp').slice(-2).map((e) => e.detail),
      transport: await window.phone.transport(),
    }));
  }
  return out;
}

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
  // The page comes from a server on 127.0.0.1 (a secure context for getUserMedia, in the proxy's address space).
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
    const { alice, bob } = pages;
    const d = opts.domain;
    result.registered.alice = await bounded(
      alice.evaluate(([url, domain]) => window.phone.register(url, 'alice', domain), [opts.wss, d]),
      'alice REGISTER over WSS',
    );
    result.registered.bob = await bounded(
      bob.evaluate(([url, domain]) => window.phone.register(url, 'bob', domain), [opts.ws, d]),
      'bob REGISTER over WS',
    );
    if (result.registered.alice !== 200 || result.registered.bob !== 200) return;
    await checkpoint('registered');

    // (a) browser to browser.
    const a = (result.calls.browser = {});
    const calling = alice.evaluate((target) => window.phone.call(target), `sip:bob@${d}`);
    a.confirmed = { alice: await bounded(calling, 'alice calls bob: confirmed') };
    a.confirmed.bob = await bounded(
      bob.waitForFunction(() => window.phone.incoming).then(() => bob.evaluate(() => window.phone.answered())),
      'bob answers alice: confirmed',
    );
    a.packets = await samplePackets({ alice, bob });
    await checkpoint('browser_up', { packets: a.packets, media: await sdps({ alice, bob }) });
    a.ended = { alice: await bounded(alice.evaluate(() => window.phone.hangup()), 'alice BYE to bob') };
    a.ended.bob = await bounded(bob.evaluate(() => window.phone.ended()), 'bob sees the BYE');
    await checkpoint('browser_down');

    // (b) browser to a SIP phone on UDP.
    const b = (result.calls.to_udp = {});
    const callingCarol = alice.evaluate((target) => window.phone.call(target), `sip:carol@${d}`);
    b.confirmed = { alice: await bounded(callingCarol, 'alice calls carol: confirmed') };
    b.packets = await samplePackets({ alice });
    await checkpoint('to_udp_up', { packets: b.packets, media: await sdps({ alice }) });
    b.ended = { alice: await bounded(alice.evaluate(() => window.phone.hangup()), 'alice BYE to carol') };
    await checkpoint('to_udp_down');

    // (c) a SIP phone on UDP calls alice.
    const c = (result.calls.from_udp = {});
    await checkpoint('from_udp_ready');
    c.confirmed = {
      alice: await bounded(
        alice.waitForFunction(() => window.phone.incoming).then(() => alice.evaluate(() => window.phone.answered())),
        'alice answers the UDP phone: confirmed',
      ),
    };
    c.packets = await samplePackets({ alice });
    await checkpoint('from_udp_up', { packets: c.packets, media: await sdps({ alice }) });
    c.ended = { alice: await bounded(alice.evaluate(() => window.phone.hangup()), 'alice BYE to the UDP phone') };
    await checkpoint('from_udp_down');

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
