#!/usr/bin/env bash
# Sourced by the pipeline scripts: `timed NAME COMMAND...` runs a command and records its wall time;
# `print_timings` lists them in order; `timings_json FILE` writes them as {"NAME": seconds, ...}.
declare -A took
order=()

timed() {
  local name="$1"; shift
  local start=$SECONDS
  echo "=== $name"
  "$@"
  took[$name]=$((SECONDS - start))
  order+=("$name")
}

print_timings() {
  echo "=== wall time per step (s)"
  local name
  for name in "${order[@]}"; do printf '%-32s %5d\n' "$name" "${took[$name]}"; done
}

timings_json() {
  local i sep
  {
    echo "{"
    for i in "${!order[@]}"; do
      sep=","; [ "$i" = $(( ${#order[@]} - 1 )) ] && sep=""
      printf '  "%s": %d%s\n' "${order[$i]}" "${took[${order[$i]}]}" "$sep"
    done
    echo "}"
  } > "$1"
}
