// The /watch/STREAM page: plays this peer's live playlist with hls.js and shows the peer's
// figures from /status every 2 s. Everything comes from this peer (no other origin).
"use strict";
(function () {
  const stream = decodeURIComponent(location.pathname.split("/").pop());
  const video = document.getElementById("video");
  const show = (id, text) => { document.getElementById(id).textContent = text; };
  show("stream", stream);
  const url = "/live/" + encodeURIComponent(stream) + "/index.m3u8";
  window.hp2pWatch = { stream: stream, errors: [], fatal: [] };
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  async function playlistReady() {
    // the peer answers 404 until its first segment is listed: wait for it, then play
    for (;;) {
      try {
        if ((await fetch(url, { cache: "no-store" })).ok) { return; }
      } catch (err) { /* the peer restarts: try again */ }
      show("error", "waiting for the stream…");
      await sleep(1000);
    }
  }
  async function play() {
    await playlistReady();
    show("error", "");
    if (window.Hls && Hls.isSupported()) {
      const hls = new Hls({ liveSyncDurationCount: 3 });
      hls.on(Hls.Events.ERROR, function (_event, data) {
        window.hp2pWatch.errors.push(data.details);  // non-fatal ones hls.js handles itself
        if (!data.fatal) { return; }
        window.hp2pWatch.fatal.push(data.details);
        if (data.type === Hls.ErrorTypes.NETWORK_ERROR) {
          setTimeout(function () { hls.startLoad(); }, 1000);  // the peer is still there
        } else if (data.type === Hls.ErrorTypes.MEDIA_ERROR) {
          hls.recoverMediaError();
        } else {
          show("error", "player error: " + data.details);
        }
      });
      hls.loadSource(url);
      hls.attachMedia(video);
      hls.on(Hls.Events.MANIFEST_PARSED, function () { video.play().catch(function () {}); });
    } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
      video.src = url;  // Safari plays HLS itself
    } else {
      show("error", "this browser cannot play HLS (no Media Source Extensions)");
    }
  }
  play();
  const fmt = (x, unit) => (x === null || x === undefined) ? "–" : x.toFixed(2) + unit;
  async function refresh() {
    show("time", video.currentTime.toFixed(1) + " s");
    try {
      const status = await (await fetch("/status")).json();
      const s = status.streams[stream];
      const tree = status.tree || {};
      show("tree", "peer " + status.peer_id + ", parent " + (tree.parent || "–") +
           ", depth " + (tree.depth === null || tree.depth === undefined ? "–" : tree.depth));
      if (s) {
        show("continuity", s.continuity === null ? "–" : (100 * s.continuity).toFixed(1) + " %");
        show("counts", s.published + " / " + s.missing);
        show("latency", "p50 " + fmt(s.latency_p50_s, " s") + ", max " + fmt(s.latency_max_s, " s"));
        show("startup", fmt(s.startup_s, " s"));
      }
    } catch (err) {
      show("error", "cannot read /status: " + err);
    }
  }
  refresh();
  setInterval(refresh, 2000);
})();
