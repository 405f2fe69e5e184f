// A browser phone for trioproxy's browser test: one JsSIP user agent per page, driven by driver.mjs through
// window.phone. Every step resolves or rejects a promise; every wait is bounded by the driver.
'use strict';

(function () {
  const log = [];
  const note = (what, detail) => log.push({ t: Date.now(), what, detail: detail || null });
  // Media stays on loopback: only 127.0.0.1 candidates are offered to, or taken from, the other side (the
  // other page, or rtpengine).
  const loopbackOnly = (sdp) =>
    sdp
      .split('\r\n')
      .filter((line) => !line.startsWith('a=candidate:') || / 127\.0\.0\.1 /.test(line))
      .join('\r\n');
  const PC_CONFIG = { iceServers: [] };
  const MEDIA = { audio: true, video: false };

  let ua = null;
  let session = null;
  let ended = null;

  function watch(s) {
    session = s;
    ended = new Promise((resolve) => {
      s.on('ended', (e) => { note('ended', e.cause + ' by ' + e.originator); resolve(e.cause); });
      s.on('failed', (e) => { note('failed', e.cause + ' by ' + e.originator); resolve('failed:' + e.cause); });
    });
    s.on('sdp', (e) => {
      e.sdp = loopbackOnly(e.sdp);
      note('sdp', { originator: e.originator, type: e.type, sdp: e.sdp });
    });
    s.on('progress', () => note('progress'));
    s.on('accepted', () => note('accepted'));
  }

  function confirmed(s) {
    return new Promise((resolve, reject) => {
      s.on('confirmed', () => { note('confirmed'); resolve(true); });
      s.on('failed', (e) => reject(new Error('call failed: ' + e.cause)));
    });
  }

  window.phone = {
    log,

    // Register over `url` (ws:// or wss://) as sip:user@domain; resolves with the REGISTER's final status.
    register(url, user, domain) {
      return new Promise((resolve) => {
        const socket = new JsSIP.WebSocketInterface(url);
        ua = new JsSIP.UA({
          sockets: [socket],
          uri: `sip:${user}@${domain}`,
          display_name: user,
          register: true,
          register_expires: 300,
          session_timers: false,
          user_agent: 'trioproxy-browser-test JsSIP',
        });
        ua.on('registered', (e) => { note('registered', e.response.status_code); resolve(e.response.status_code); });
        ua.on('registrationFailed', (e) => {
          const status = e.response ? e.response.status_code : 0;
          note('registrationFailed', e.cause);
          resolve(status);
        });
        ua.on('newRTCSession', (e) => {
          note('newRTCSession', e.originator);
          if (e.originator === 'remote') {
            watch(e.session);
            window.phone.incoming = confirmed(e.session);
            e.session.answer({ mediaConstraints: MEDIA, pcConfig: PC_CONFIG });
          }
        });
        ua.start();
      });
    },

    // Call `target` (a SIP URI); resolves when JsSIP reports the call 'confirmed'.
    call(target) {
      const s = ua.call(target, { mediaConstraints: MEDIA, pcConfig: PC_CONFIG });
      watch(s);
      return confirmed(s);
    },

    // Resolves when an incoming call is confirmed (answered and ACKed).
    answered() {
      return window.phone.incoming || Promise.reject(new Error('no incoming call'));
    },

    // RTP packets received so far on the call's inbound audio stream (getStats), or -1 without a call.
    async packetsReceived() {
      if (!session || !session.connection) return -1;
      const stats = await session.connection.getStats();
      let packets = 0;
      stats.forEach((r) => { if (r.type === 'inbound-rtp' && r.kind === 'audio') packets += r.packetsReceived || 0; });
      return packets;
    },

    // The call's ICE and DTLS state as the browser sees it (getStats 'transport'), for diagnostics.
    async transport() {
      if (!session || !session.connection) return null;
      const stats = await session.connection.getStats();
      const out = [];
      stats.forEach((r) => {
        if (r.type === 'transport') out.push({ ice: r.iceState, dtls: r.dtlsState, role: r.dtlsRole, srtp: r.srtpCipher });
      });
      return out;
    },

    hangup() { session.terminate(); return ended; },
    ended() { return ended || Promise.reject(new Error('no call')); },
    stop() { if (ua) ua.stop(); },
  };
})();
