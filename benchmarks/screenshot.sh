#!/usr/bin/env bash
# Render an HTML page (the demo's report.html) in headless Chromium and save a full-page PNG to look at.
#   benchmarks/screenshot.sh runs/demo/report.html runs/demo/report.png [WIDTH]
# Needs Debian's chromium (apt-get install chromium).
set -euo pipefail
page=$(realpath "$1"); out=$(realpath -m "$2"); width=${3:-1200}
height=$(python3 - "$page" <<'PY'
import re, sys
html = open(sys.argv[1]).read()
print(600 + 60 * html.count("<tr>") + 40 * html.count("<li>") + 700 * html.count("<img"))  # a page-long window
PY
)
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size="$width,$height" \
    --screenshot="$out" "file://$page" 2>/dev/null
echo "$out"
