#!/usr/bin/env bash
# Build the Bento's container image and check it for real:
#   bash scripts/check_container.sh
# 1. `bash scripts/build_bento.sh`, then
#    `DOCKER_BUILDKIT=0 bentoml containerize t2i-server:latest -t t2i-server:check --opt network=host`
#    (the legacy builder, on the host's network);
# 2. `docker run -d --network host t2i-server:check serve --port <free port>`;
# 3. checks: the container starts and /readyz turns 200; the image holds the pinned torch (a CUDA 13
#    build) and accelerate; POST /generate answers a PNG; /v1/images/generations and /sdapi/v1/txt2img
#    answer 200 with their documented shapes; SIGTERM drains: requests in flight when the container
#    gets `docker kill --signal TERM` still finish with 200, and the container exits 0 within a bound;
# 4. prints a PASS/FAIL summary with the image size and removes its container (the image stays).
#
# Exit status: 0 all checks passed, 1 a check failed, 77 skipped (no working Docker engine: the
# reason is printed on a line starting with "SKIP:").
#
# When the base image of bentofile.yaml is neither present nor pullable and the stand-in tool
# ../shared/tools/local-docker.sh exists (an offline machine), a stand-in of the same tag is made with
# it; the summary then says so, and the image size excludes NVIDIA's real base layers.
#
# Settings (environment):
#   T2I_CHECK_IMAGE       image tag to build and run (t2i-server:check)
#   T2I_CHECK_PORTS       range to take a free port from (3700-3799)
#   T2I_CHECK_NO_BUILD=1  run the checks on an existing T2I_CHECK_IMAGE, skip bento build and containerize
#   T2I_CHECK_READY_S     how long /readyz may take to turn 200 (600)
#   T2I_CHECK_DRAIN_S     how long the container may take to exit after SIGTERM (180)
#   T2I_CHECK_SLOW_STEPS  denoising steps of the requests in flight at SIGTERM (50, at most 100)
#   T2I_CHECK_SLOW_SIZE   their width and height (512)
#   T2I_CHECK_SLOW_N      how many of them run concurrently (3)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

IMAGE=${T2I_CHECK_IMAGE:-t2i-server:check}
PORTS=${T2I_CHECK_PORTS:-3700-3799}
READY_S=${T2I_CHECK_READY_S:-600}
DRAIN_S=${T2I_CHECK_DRAIN_S:-180}
SLOW_STEPS=${T2I_CHECK_SLOW_STEPS:-50}
SLOW_SIZE=${T2I_CHECK_SLOW_SIZE:-512}
SLOW_N=${T2I_CHECK_SLOW_N:-3}
STANDIN_TOOL=$ROOT/../shared/tools/local-docker.sh

skip() { echo "SKIP: $*"; exit 77; }

if ! command -v docker >/dev/null 2>&1; then
  skip "no docker command on PATH"
fi
if ! docker_err=$(docker info 2>&1 >/dev/null); then
  skip "docker info fails, no Docker engine to talk to: $(printf '%s' "$docker_err" | tail -n 1)"
fi
for tool in curl python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "FAIL: $tool is needed on the host"; exit 1; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/t2i-check.XXXXXX")
CONTAINER=t2i-check-$$
RESULTS=()
FAILED=0
STANDIN=""
ok() { RESULTS+=("PASS  $*"); echo "PASS: $*"; }
bad() { RESULTS+=("FAIL  $*"); echo "FAIL: $*"; FAILED=1; }
note() { RESULTS+=("note  $*"); echo "note: $*"; }

cleanup() {
  if docker container inspect "$CONTAINER" >/dev/null 2>&1; then
    docker logs "$CONTAINER" >"$WORK/container.log" 2>&1 || true
    docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

summary() {
  local size="" bytes
  if bytes=$(docker image inspect -f '{{.Size}}' "$IMAGE" 2>/dev/null); then
    size=$(python3 -c "import sys; b = int(sys.argv[1]); print(f'{b / 1e9:.2f} GB ({b} bytes)')" "$bytes")
  fi
  echo
  echo "== container check: $IMAGE =="
  if [ -n "$size" ] && [ -n "$STANDIN" ]; then
    echo "image size: $size, built on a stand-in base (NVIDIA base layers not included)"
  elif [ -n "$size" ]; then
    echo "image size: $size"
  fi
  printf '%s\n' "${RESULTS[@]}"
  if [ "$FAILED" = 0 ]; then echo "RESULT: PASS"; else echo "RESULT: FAIL"; fi
}

finish() {
  if [ "$FAILED" != 0 ] && docker container inspect "$CONTAINER" >/dev/null 2>&1; then
    echo "--- last lines of the container's log ---"
    docker logs --tail 60 "$CONTAINER" 2>&1 || true
  fi
  summary
  exit "$FAILED"
}

# --- the base image of bentofile.yaml --------------------------------------------------------------
BASE=$(sed -n 's/^[[:space:]]*base_image:[[:space:]]*"\{0,1\}\([^"[:space:]]*\)"\{0,1\}.*/\1/p' bentofile.yaml | head -n 1)
if [ -z "${T2I_CHECK_NO_BUILD:-}" ]; then
  [ -n "$BASE" ] || { bad "no docker.base_image in bentofile.yaml"; finish; }
  if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    echo "base image $BASE not present: pulling it"
    if ! timeout 1800 docker pull "$BASE"; then
      if [ -f "$STANDIN_TOOL" ]; then
        echo "no registry reachable: making a stand-in for $BASE with $STANDIN_TOOL"
        bash "$STANDIN_TOOL" base "$BASE" || { bad "could not make a stand-in for $BASE"; finish; }
      else
        bad "base image $BASE is not present and cannot be pulled"; finish
      fi
    fi
  fi
fi
if [ -n "$BASE" ] && docker image inspect "$BASE" >/dev/null 2>&1; then
  if docker image inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$BASE" | grep -q '^NVIDIA_REQUIRE_CUDA='; then
    note "base image $BASE: NVIDIA's (NVIDIA_REQUIRE_CUDA set)"
  else
    STANDIN=1
    note "base image $BASE: a stand-in (no NVIDIA_REQUIRE_CUDA): no CUDA base layers, no GPU"
  fi
fi

# --- build ---------------------------------------------------------------------------------------
if [ -z "${T2I_CHECK_NO_BUILD:-}" ]; then
  echo "building the Bento"
  if ! nice -n 10 bash scripts/build_bento.sh >"$WORK/build.log" 2>&1; then
    tail -n 40 "$WORK/build.log"; bad "bash scripts/build_bento.sh"; finish
  fi
  ok "bentoml build: $(grep -o 'Bento(tag="[^"]*")' "$WORK/build.log" | tail -n 1)"
  echo "containerizing (legacy builder, host network): the first build downloads the CUDA wheels, ~5 GB"
  start=$(date +%s)
  if ! DOCKER_BUILDKIT=0 nice -n 10 .venv/bin/bentoml containerize t2i-server:latest -t "$IMAGE" \
      --opt network=host >"$WORK/containerize.log" 2>&1; then
    tail -n 40 "$WORK/containerize.log"; bad "bentoml containerize"; finish
  fi
  ok "bentoml containerize -> $IMAGE ($(( $(date +%s) - start )) s)"
fi
docker image inspect "$IMAGE" >/dev/null 2>&1 || { bad "image $IMAGE not found"; finish; }

# --- what the image installed --------------------------------------------------------------------
want_accelerate=$(sed -n 's/^accelerate==\([^[:space:]#]*\).*/\1/p' requirements.txt)
want_torch=$(sed -n 's/^torch==\([^[:space:]#]*\).*/\1/p' requirements.txt)
if versions=$(docker run --rm --network none --entrypoint /app/.venv/bin/python "$IMAGE" -c \
    'import accelerate, torch; print(accelerate.__version__, torch.__version__, torch.version.cuda)' 2>"$WORK/versions.err"); then
  read -r got_accelerate got_torch got_cuda <<<"$versions"
  if [ "$got_accelerate" = "$want_accelerate" ] && [ "${got_torch%%+*}" = "$want_torch" ] && [ "${got_cuda%%.*}" = 13 ]; then
    ok "image packages: accelerate $got_accelerate, torch $got_torch built for CUDA $got_cuda"
  else
    bad "image packages: accelerate $got_accelerate (want $want_accelerate), torch $got_torch (want $want_torch), CUDA $got_cuda (want 13.x)"
  fi
else
  bad "importing accelerate and torch in the image: $(tail -n 3 "$WORK/versions.err")"
fi
if nv=$(docker run --rm --network none --entrypoint sh "$IMAGE" -c \
    'du -sb /app/.venv/lib/python3*/site-packages/nvidia 2>/dev/null | cut -f1'); then
  [ -n "$nv" ] && note "CUDA libraries of torch's nvidia-* wheels in the image: $(python3 -c "import sys; print(f'{int(sys.argv[1]) / 1e9:.2f} GB')" "$nv") (site-packages/nvidia)"
fi

# --- run -----------------------------------------------------------------------------------------
PORT=""
for p in $(seq "${PORTS%-*}" "${PORTS#*-}"); do
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then PORT=$p; break; fi
done
[ -n "$PORT" ] || { bad "no free port in $PORTS"; finish; }
URL=http://127.0.0.1:$PORT
if ! docker run -d --name "$CONTAINER" --network host "$IMAGE" serve --port "$PORT" >/dev/null; then
  bad "docker run"; finish
fi
echo "container $CONTAINER serving on port $PORT; waiting up to ${READY_S} s for /readyz"
start=$(date +%s)
ready=""
while [ $(( $(date +%s) - start )) -lt "$READY_S" ]; do
  if [ "$(docker inspect -f '{{.State.Running}}' "$CONTAINER" 2>/dev/null)" != true ]; then break; fi
  if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$URL/readyz")" = 200 ]; then ready=1; break; fi
  sleep 2
done
if [ -z "$ready" ]; then
  bad "container started and /readyz turned 200 (running: $(docker inspect -f '{{.State.Running}} exit {{.State.ExitCode}}' "$CONTAINER" 2>&1))"
  finish
fi
ok "container started, /readyz 200 after $(( $(date +%s) - start )) s"

post() {  # post PATH JSON OUT -> prints "HTTP_CODE CONTENT_TYPE"
  curl -s -o "$3" -w '%{http_code} %{content_type}' --max-time 300 -H 'Content-Type: application/json' \
    -X POST "$URL$1" -d "$2"
}

read -r code ctype <<<"$(post /generate '{"prompt": "a cat", "steps": 1}' "$WORK/generate.png")"
if [ "$code" = 200 ] && [ "${ctype%%;*}" = image/png ] && [ "$(head -c 8 "$WORK/generate.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ]; then
  ok "POST /generate -> 200 image/png ($(wc -c <"$WORK/generate.png") bytes)"
else
  bad "POST /generate -> $code $ctype: $(head -c 300 "$WORK/generate.png")"
fi

read -r code ctype <<<"$(post /v1/images/generations '{"prompt": "a cat", "n": 2, "num_inference_steps": 1, "seed": 5}' "$WORK/openai.json")"
if [ "$code" = 200 ] && shape=$(python3 - "$WORK/openai.json" <<'EOF'
import base64, json, sys
body = json.load(open(sys.argv[1]))
assert isinstance(body["created"], int) and body["model"] and body["size"] and body["output_format"] == "png", body
assert len(body["data"]) == 2, body["data"]
for item in body["data"]:
    assert base64.b64decode(item["b64_json"]).startswith(b"\x89PNG"), "b64_json is not a PNG"
    assert isinstance(item["seed"], int) and "revised_prompt" in item
assert [item["seed"] for item in body["data"]] == [5, 6]
print(f'model {body["model"]}, size {body["size"]}, seeds 5 and 6')
EOF
); then
  ok "POST /v1/images/generations -> 200 {created, data[2]{b64_json PNG, seed, revised_prompt}, model, size, output_format}: $shape"
else
  bad "POST /v1/images/generations -> $code: $(head -c 300 "$WORK/openai.json")"
fi

read -r code ctype <<<"$(post /sdapi/v1/txt2img '{"prompt": "a cat", "steps": 1, "seed": 7}' "$WORK/a1111.json")"
if [ "$code" = 200 ] && shape=$(python3 - "$WORK/a1111.json" <<'EOF'
import base64, json, sys
body = json.load(open(sys.argv[1]))
assert len(body["images"]) == 1 and base64.b64decode(body["images"][0]).startswith(b"\x89PNG"), "images[0] is not a PNG"
assert isinstance(body["parameters"], dict), body["parameters"]
info = json.loads(body["info"])
assert info["seed"] == 7 and info["all_seeds"] == [7] and info["infotexts"], info
print("seed 7")
EOF
); then
  ok "POST /sdapi/v1/txt2img -> 200 {images[1] PNG, parameters, info (JSON string: seed, all_seeds, infotexts)}: $shape"
else
  bad "POST /sdapi/v1/txt2img -> $code: $(head -c 300 "$WORK/a1111.json")"
fi

# --- SIGTERM drains --------------------------------------------------------------------------------
echo "SIGTERM drain: $SLOW_N requests of $SLOW_STEPS steps at ${SLOW_SIZE}x${SLOW_SIZE} in flight, then docker kill --signal TERM"
for i in $(seq 1 "$SLOW_N"); do
  (
    code=$(curl -s -o "$WORK/slow$i.out" -w '%{http_code}' --max-time "$DRAIN_S" -H 'Content-Type: application/json' \
      -X POST "$URL/generate" -d "{\"prompt\": \"drain $i\", \"steps\": $SLOW_STEPS, \"width\": $SLOW_SIZE, \"height\": $SLOW_SIZE, \"seed\": $i}")
    echo "$code $(date +%s.%N)" >"$WORK/slow$i.result"
  ) &
done
# wait until the engine is working on them (its progress counter moves), at most 60 s
sleep 2
for _ in $(seq 1 58); do
  ls "$WORK"/slow*.result >/dev/null 2>&1 && break
  curl -s --max-time 5 "$URL/metrics" 2>/dev/null | grep -q '^t2i_requests_in_flight[^ ]* [1-9]' && break
  sleep 1
done
kill_at=$(date +%s.%N)
docker kill --signal TERM "$CONTAINER" >/dev/null
# a new request during the drain: refused (503 shutting_down, or the connection closed)
late=$(curl -s -o "$WORK/late.out" -w '%{http_code}' --max-time 30 -H 'Content-Type: application/json' \
  -X POST "$URL/generate" -d '{"prompt": "too late", "steps": 1}')
late_rc=$?
wait
for i in $(seq 1 "$SLOW_N"); do
  read -r code done_at <"$WORK/slow$i.result"
  if [ "$code" != 200 ]; then
    bad "request $i in flight at SIGTERM -> $code: $(head -c 200 "$WORK/slow$i.out")"
  elif python3 -c "import sys; sys.exit(not float(sys.argv[1]) > float(sys.argv[2]))" "$done_at" "$kill_at"; then
    ok "request $i in flight at SIGTERM finished with 200, $(python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.1f}')" "$done_at" "$kill_at") s after it"
  else
    bad "request $i had finished before SIGTERM: raise T2I_CHECK_SLOW_STEPS to test the drain"
  fi
done
if [ "$late" = 503 ]; then
  ok "a new request during the drain refused: 503 $(head -c 120 "$WORK/late.out")"
elif [ "$late" = 000 ] && [ "$late_rc" != 28 ]; then
  ok "a new request during the drain refused: connection closed (curl exit $late_rc)"
else
  bad "a new request during the drain -> $late, curl exit $late_rc (want 503 or a closed connection): $(head -c 200 "$WORK/late.out")"
fi
if exit_code=$(timeout "$DRAIN_S" docker wait "$CONTAINER"); then
  stopped=$(python3 -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$kill_at")
  if [ "$exit_code" = 0 ]; then
    ok "container exited 0, ${stopped} s after SIGTERM"
  else
    bad "container exited $exit_code after SIGTERM (want 0)"
  fi
else
  bad "container still running ${DRAIN_S} s after SIGTERM"
fi
finish
