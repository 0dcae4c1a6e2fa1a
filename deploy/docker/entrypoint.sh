#!/bin/sh
# The images' entrypoint: `gateway serve` with
#   - the settings file the arguments name (--config FILE, -c FILE), as given;
#   - else the config mounted at /code/config.yaml (GATEWAY_CONFIG_MOUNT), where Takeoff's
#     images read theirs (a Takeoff config.yaml is read as it is, a gateway settings file
#     or a `vllm serve --config` file too), before any other argument;
#   - else, with no argument at all, the image's preset (GATEWAY_PRESET);
#   - else the arguments alone, as `vllm serve MODEL --flags` takes them.
set -eu
for arg in "$@"; do
  case "$arg" in
    --config | --config=* | -c) exec gateway serve "$@" ;;
  esac
done
mounted=${GATEWAY_CONFIG_MOUNT:-/code/config.yaml}
if [ -f "$mounted" ]; then
  exec gateway serve --config "$mounted" "$@"
fi
if [ "$#" -eq 0 ]; then
  exec gateway serve --config "$GATEWAY_PRESET"
fi
exec gateway serve "$@"
