#!/usr/bin/env bash
# What the compiler made of the CUDA kernel, per instantiation (issue 15): from the
# device code embedded in a built clr_ext._C*.so (or libclr_ext.so), with cuobjdump,
#   - 128-bit global loads and stores (LDG.E.128 / STG.E.128 in the SASS): the 16-byte
#     vector path of csrc/cuda/scheduled_sgd_kernel.cuh exists only if they do,
#   - all global loads, and local-memory loads / stores (LDL / STL) in thread 0's
#     schedule before the block's barrier, in the element loop (register spills: the
#     verdict) and in the subroutines laid out after the kernel's EXIT,
#   - registers, stack and local bytes per thread, static shared memory
#     (cuobjdump --dump-resource-usage).
# Prints a markdown table and a verdict line; run by bench/gpu_check.sh (on the built
# .so) and .ci/cuda_build.sh (on the CI build, no GPU needed).
#
# Usage: bench/sass_report.sh SO [OUT_FILE]
#   OUT_FILE: also write the table there (appended to, so a log can collect it).
# Environment: CUOBJDUMP (the tool; its -sass needs nvdisasm beside it or on PATH),
#   CUDA_HOME, PYTHON (whose site-packages may hold the nvidia-cuda-cuobjdump and
#   nvidia-cuda-nvdisasm wheels' binaries), SASS_REQUIRE_VECTOR=1 (exit 3 when the
#   float32 instantiation has no LDG.E.128).
# Exit status: 0 with a table; 2 when there is no cuobjdump or no device code (the
# report says why; callers treat it as "not measured"); 3 see SASS_REQUIRE_VECTOR.
set -uo pipefail
SO=${1:-}
OUTF=${2:-}
[ -n "$SO" ] && [ -f "$SO" ] || { echo "sass_report: no such file: '${SO}' (usage: $0 SO [OUT_FILE])"; exit 2; }

emit() {  # stdout, and OUT_FILE when given
  if [ -n "$OUTF" ]; then printf '%s\n' "$*" | tee -a "$OUTF"; else printf '%s\n' "$*"; fi
}

find_cuobjdump() {
  local c
  for c in "${CUOBJDUMP:-}" "${CUDA_HOME:+$CUDA_HOME/bin/cuobjdump}" "$(command -v cuobjdump 2>/dev/null)" \
           /usr/local/cuda/bin/cuobjdump /usr/local/cuda-13.0/bin/cuobjdump; do
    [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return 0; }
  done
  # the nvidia-cuda-cuobjdump wheel: in the python's site-packages, or in the venv that
  # .ci/cuda_build.sh makes (it installs the wheel there)
  local py site
  for py in "${PYTHON:-}" python3 python \
            "${CLR_EXT_CUDA_VENV:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/clr_ext/venv-cu130}/bin/python"; do
    [ -n "$py" ] && command -v "$py" >/dev/null || continue
    site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" 2>/dev/null) || continue
    for c in "$site"/nvidia/*/bin/cuobjdump; do
      [ -x "$c" ] && { echo "$c"; return 0; }
    done
  done
  return 1
}

CUOBJ=$(find_cuobjdump) || {
  emit "SASS: not measured: no cuobjdump (not in \$CUDA_HOME/bin, on PATH or in the nvidia-cuda-cuobjdump wheel; set CUOBJDUMP)"
  exit 2
}
# cuobjdump -sass runs nvdisasm, which the toolkit and the nvidia-cuda-nvdisasm wheel put beside it
export PATH="$(dirname "$CUOBJ")${CUDA_HOME:+:$CUDA_HOME/bin}:$PATH"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! "$CUOBJ" -sass "$SO" >"$tmp/sass.txt" 2>"$tmp/err.txt" || ! grep -q "Function :" "$tmp/sass.txt"; then
  emit "SASS: not measured: $CUOBJ -sass found no device code in $SO ($(head -c 200 "$tmp/err.txt" | tr '\n' ' '))"
  exit 2
fi
"$CUOBJ" --dump-resource-usage "$SO" >"$tmp/res.txt" 2>>"$tmp/err.txt" || true

# arch, mangled name, LDG.128, STG.128, LDG all, then local-memory accesses (LDL + STL) in
# three parts of the code: before the block's barrier (thread 0 evaluating the schedule:
# local structs), the element loop (barrier to the first unconditional EXIT: register
# spills), and the subroutines laid out after it (called from either part); instructions.
awk '
  /arch = sm_/ { arch = $3 }
  /Function :/ { if (fn != "") out(); fn = $3; l128 = s128 = ldg = pre = loop = sub_ = n = part = 0; next }
  fn != "" && /\/\*[0-9a-f]+\*\/ / {
    n++
    if (part == 0 && $0 ~ /[ \t]BAR\.SYNC/) part = 1
    else if (part == 1 && $2 == "EXIT") part = 2
    if ($0 ~ /[ \t]LDG[.A-Z0-9_]*\.128[ .]/) l128++
    if ($0 ~ /[ \t]STG[.A-Z0-9_]*\.128[ .]/) s128++
    if ($0 ~ /[ \t]LDG[. ]/) ldg++
    if ($0 ~ /[ \t](LDL|STL)[. ]/) { if (part == 0) pre++; else if (part == 1) loop++; else sub_++ }
  }
  function out() { printf "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", arch, fn, l128, s128, ldg, pre, loop, sub_, n }
  END { if (fn != "") out() }
' "$tmp/sass.txt" >"$tmp/sass.tsv"

# arch <TAB> mangled name <TAB> REG <TAB> STACK <TAB> LOCAL <TAB> SHARED
awk '
  /arch = sm_/ { arch = $3 }
  /^[ \t]*Function [^:]*:[ \t]*$/ { fn = $2; sub(/:$/, "", fn); next }
  fn != "" && /REG:/ {
    reg = stack = local = shared = "?"
    for (i = 1; i <= NF; i++) {
      split($i, kv, ":")
      if (kv[1] == "REG") reg = kv[2]; else if (kv[1] == "STACK") stack = kv[2]
      else if (kv[1] == "LOCAL") local = kv[2]; else if (kv[1] == "SHARED") shared = kv[2]
    }
    printf "%s\t%s\t%s\t%s\t%s\t%s\n", arch, fn, reg, stack, local, shared
    fn = ""
  }
' "$tmp/res.txt" >"$tmp/res.tsv"

demangle() { if command -v c++filt >/dev/null; then c++filt; else cat; fi; }

emit "SASS of $(basename "$SO") ($("$CUOBJ" --version 2>/dev/null | grep -o 'release [0-9.]*' | head -1 || echo cuobjdump)):"
emit ""
emit "| arch | kernel | LDG.E.128 | STG.E.128 | LDG (all) | LDL+STL: thread 0 / loop / subroutines | registers | stack B | local B | shared B | SASS instr. |"
emit "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
fp32_vec=""
while IFS=$'\t' read -r arch fn l128 s128 ldg pre loop sub n; do
  name=$(printf '%s\n' "$fn" | demangle | sed 's/(.*//')
  res=$(awk -F'\t' -v a="$arch" -v f="$fn" '$1 == a && $2 == f { print $3 "\t" $4 "\t" $5 "\t" $6; exit }' "$tmp/res.tsv")
  IFS=$'\t' read -r reg stack local shared <<<"${res:-?	?	?	?}"
  emit "| $arch | \`$name\` | $l128 | $s128 | $ldg | $pre / $loop / $sub | $reg | $stack | $local | $shared | $n |"
  case "$name" in *"cyclic_sgd_kernel<float>"*) fp32_vec=${fp32_vec:-$l128} ;; esac
done <"$tmp/sass.tsv"
emit ""
if [ -z "$fp32_vec" ]; then
  emit "vector path (LDG.E.128 in cyclic_sgd_kernel<float>): UNKNOWN (no such instantiation)"
  verdict=1
elif [ "$fp32_vec" -gt 0 ]; then
  emit "vector path (LDG.E.128 in cyclic_sgd_kernel<float>): YES ($fp32_vec)"
  verdict=0
else
  emit "vector path (LDG.E.128 in cyclic_sgd_kernel<float>): NO (0: the 16-byte loads were split)"
  verdict=1
fi
spilled=$(awk -F'\t' '$7 > 0 { n++ } END { print n + 0 }' "$tmp/sass.tsv")
emit "spills in the element loop (LDL/STL between the block's barrier and its EXIT): $spilled of $(wc -l <"$tmp/sass.tsv") instantiations"
emit "(LDL/STL of thread 0 before the barrier, and in subroutines such as the schedule's double pow, are local structs: the 'stack' column;"
emit " 'shared' includes the 1 KB per block that sm_80 and later reserve for the system)"
if [ "${SASS_REQUIRE_VECTOR:-0}" = 1 ] && [ "$verdict" != 0 ]; then exit 3; fi
exit 0
