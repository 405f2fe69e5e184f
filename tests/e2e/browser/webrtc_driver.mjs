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
import { createInterface } from 'node:readline';

import { bounded, opts, registerBoth, run, sleep, stopPhones, withPhones } from './chromium.mjs';

const TOTAL_MS = opts.totalMs || 75000; // bound of the whole run
const SAMPLE_MS = opts.sampleMs || 1200; // between two getStats samples

const result = { registered: {}, calls: {}, logs: {}, error: null };

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
  await withPhones(['alice', 'bob'], result, async (pages) => {
    const { alice, bob } = pages;
    const d = opts.domain;
    if (!(await registerBoth(pages, result))) return;
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

    await stopPhones(pages, result);
  });
}

run(main, result, TOTAL_MS);
