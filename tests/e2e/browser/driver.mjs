// Drives two headless Chromium pages, each a JsSIP phone (phone.js), through trioproxy's WebSocket
// transports: alice registers over WSS, bob over WS, alice calls bob, bob answers, media flows between the two
// browsers over loopback, alice hangs up. Prints one JSON object with what each step saw; exit status 0 when
// the run finished (the Python test judges the results), 1 on an error (the JSON carries it).
//
// Usage: node driver.mjs '{"ws": "ws://127.0.0.1:P", "wss": "wss://127.0.0.1:Q", "domain": "127.0.0.1"}'
import { bounded, opts, registerBoth, run, sleep, stopPhones, withPhones } from './chromium.mjs';

const TOTAL_MS = opts.totalMs || 60000; // bound of the whole run

const result = { registered: {}, confirmed: {}, packets: {}, ended: {}, logs: {}, error: null };

async function main() {
  await withPhones(['alice', 'bob'], result, async (pages) => {
    const { alice, bob } = pages;
    if (!(await registerBoth(pages, result))) return;
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
    await stopPhones(pages, result);
  });
}

run(main, result, TOTAL_MS);
