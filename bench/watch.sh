#!/usr/bin/env bash
# /watch in headless Chromium on loopback: page load to `playing`, and `seeking` to `seeked` at
# SEEKS random offsets (p50, p90), in a warm swarm (an origin and PEERS peer_servers holding a
# 48 s VP9/Opus WebM made with ffmpeg) through `peer_client gateway` with a fresh store. The
# times are the page's own (performance.now() at each video event, from navigation start), so
# WebDriver's round trips are not in them. A quick check, not a long benchmark.
#
#   bench/watch.sh                                # 3 peers, 10 seeks, 3 page loads
#   SEEKS=20 LOADS=5 bench/watch.sh
#   SCREENSHOT=watch.png bench/watch.sh           # also saves a PNG of the page
#   GATEWAY=http://127.0.0.1:8080 ID=<asset-id> bench/watch.sh   # an already running gateway
# Needs ffmpeg, chromium and chromedriver (Debian: apt-get install ffmpeg chromium chromium-driver).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
PEERS=${PEERS:-3}
SEEKS=${SEEKS:-10}
LOADS=${LOADS:-3}
for tool in ffmpeg chromium chromedriver python3; do
  command -v "$tool" > /dev/null || { echo "bench/watch.sh needs $tool" >&2; exit 1; }
done
SHOT=${SCREENSHOT:+$(realpath -m "$SCREENSHOT")}
W=$(mktemp -d "${TMPDIR:-/tmp}/swarmcache-watch.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT

if [ -z "${GATEWAY:-}" ]; then
  [ -n "${BIN:-}" ] || cargo build --release -q
  B=${BIN:-$PWD/target/release}
  cd "$W"
  ffmpeg -hide_banner -loglevel error -f lavfi -i testsrc2=size=320x180:rate=25 \
    -f lavfi -i sine=frequency=440:sample_rate=48000 -t 48 -c:v libvpx-vp9 -deadline realtime \
    -cpu-used 8 -b:v 400k -g 50 -c:a libopus -b:a 64k clip.webm
  "$B/tracker" --listen 127.0.0.1:0 --data tracker > tracker.log 2>&1 & pids+=($!)
  url=$(wait_line tracker.log "listening on ")
  "$B/peer_server" --listen 127.0.0.1:0 --store origin --seed clip.webm --tracker "$url" \
    --origin > origin.log 2>&1 & pids+=($!)
  ID=$(wait_line origin.log "seeded " | cut -d' ' -f1)
  for p in $(seq "$PEERS"); do
    "$B/peer_server" --listen 127.0.0.1:0 --store "peer-$p" --seed clip.webm --tracker "$url" \
      > "peer-$p.log" 2>&1 & pids+=($!)
    wait_line "peer-$p.log" "listening on " > /dev/null
  done
  "$B/peer_client" gateway --listen 127.0.0.1:0 --tracker "$url" --store gateway-store \
    > gateway.log 2>&1 & pids+=($!)
  GATEWAY=$(wait_line gateway.log "listening on ")
fi
cd "$W"

python3 - "$GATEWAY" "$ID" "$SEEKS" "$LOADS" "${SHOT:-}" <<'PY'
import base64, json, random, socket, statistics, subprocess, sys, time, urllib.request
gateway, asset, seeks, loads, shot = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
driver = subprocess.Popen(["chromedriver", f"--port={port}"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
root = f"http://127.0.0.1:{port}"
session = "/session/none"

def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(root + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)["value"]

def wait(script, what, timeout=60):
    deadline = time.time() + timeout
    while not call("POST", f"{session}/execute/sync", {"script": script, "args": []}):
        if time.time() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.05)

try:
    for _ in range(100):
        try:
            call("GET", "/status"); break
        except OSError:
            time.sleep(0.1)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--mute-audio", "--autoplay-policy=no-user-gesture-required", "--window-size=1100,900",
             "--user-data-dir=" + __import__("tempfile").mkdtemp(dir=".")]
    caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"args": flags}}}}
    session = "/session/" + call("POST", "/session", caps)["sessionId"]
    call("POST", f"{session}/timeouts", {"script": 30000})
    starts = []
    for _ in range(loads):
        call("POST", f"{session}/url", {"url": "about:blank"})
        call("POST", f"{session}/url", {"url": f"{gateway}/watch/{asset}"})
        wait("return (window.watchEvents || []).some(e => e.type === 'playing');", "playing")
        starts.append(call("POST", f"{session}/execute/sync", {"script":
            "return window.watchEvents.find(e => e.type === 'playing').t;", "args": []}))
    times = []
    for offset in [random.random() * 0.9 for _ in range(seeks)]:
        r = call("POST", f"{session}/execute/async", {"args": [offset], "script": """
            const done = arguments[arguments.length - 1], v = document.getElementById('video');
            let t0 = 0;
            v.addEventListener('seeking', () => { t0 = performance.now(); }, { once: true });
            v.addEventListener('seeked', () => done(performance.now() - t0), { once: true });
            v.currentTime = v.duration * arguments[0];"""})
        times.append(r)
    wait("const v = document.getElementById('video'); return !v.paused && v.readyState >= 3;",
         "playback after the seeks")
    if shot:
        time.sleep(2.5)  # two polls of /stats, so the figures are on the page
        with open(shot, "wb") as f:
            f.write(base64.b64decode(call("GET", f"{session}/screenshot")))
        print(f"screenshot: {shot}")
    figures = call("POST", f"{session}/execute/sync", {"args": [], "script":
        "return ['peers','bytes-peers','bytes-origin','p2p-ratio'].map(i => i + ' ' + document.getElementById(i).textContent).join(', ');"})
    q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int((len(xs) - 1) * p + 0.5))]
    print(f"/watch page load -> playing ({loads} loads): p50 {q(starts, 0.5):.0f} ms, max {max(starts):.0f} ms")
    print(f"seeking -> seeked ({seeks} random offsets): p50 {q(times, 0.5):.1f} ms, p90 {q(times, 0.9):.1f} ms (target p50 <= 150 ms)")
    print(f"page figures: {figures}")
finally:
    # Deleting the session ends the browser; killing chromedriver alone could leave it running.
    try:
        call("DELETE", session)
    except Exception:
        pass
    driver.kill()
PY
