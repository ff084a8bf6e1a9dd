#!/usr/bin/env bash
# Regenerate docs/demo.md from a finished demo: its page (results.md) and charts, as the demo wrote them.
#   python benchmarks/peak_memory.py -- .venv/bin/bingo demo --out runs/demo   # time and memory of the whole demo
#   benchmarks/demo_docs.sh runs/demo 'LAST LINE IT PRINTED'                   # then this
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-runs/demo}; measured=${2:-}
rm -rf docs/demo-figures && cp -r "$run/demo-figures" docs/demo-figures
{
  echo "<!-- Written by 'bingo demo' into $run/results.md and copied here by benchmarks/demo_docs.sh; do not edit. -->"
  cat "$run/results.md"
  if [ -n "$measured" ]; then
    echo
    echo "Whole demo, measured by \`python benchmarks/peak_memory.py -- .venv/bin/bingo demo --out $run\`"
    echo "(installation excluded; peak: proportional set size of the process tree): \`$measured\`."
  fi
  echo
  echo "The page as a browser shows it: \`$run/report.html\` (checked with \`benchmarks/screenshot.sh\`)."
  echo "Earlier demos, their tuning and what they found: [demo-history.md](demo-history.md)."
} > docs/demo.md
echo docs/demo.md
