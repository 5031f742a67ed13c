#!/bin/sh
# tests/run-all.sh BUILD_DIR PREFIX -- run every test suite and end with
# one line "N passed, N failed".
#
#   BUILD_DIR  a configured build tree (unit tests: make check)
#   PREFIX     where `make install` put mailgated, mailgatectl, the headers
#              and mailgate.pc (integration tests)
#   MG_SANITIZE=1 in the environment when the build uses the sanitizers.
#
# Exit status 0 only when nothing failed and at least one test ran.
set -u

if [ $# -ne 2 ]; then
    echo "usage: $0 BUILD_DIR PREFIX" >&2
    exit 2
fi
BUILD_DIR=$(cd "$1" && pwd) || exit 2
PREFIX=$(cd "$2" && pwd) || exit 2
SRCDIR=$(cd "$(dirname "$0")/.." && pwd) || exit 2
PYTHON=/usr/bin/python3

# ---------------------------------------------------------------- unit tests
echo "== unit tests (make -C $BUILD_DIR check)"
make -C "$BUILD_DIR" check
unit_rc=$?
unit_pass=0
unit_fail=0
if [ -f "$BUILD_DIR/test-suite.log" ]; then
    # automake's summary: "# PASS:  7", "# FAIL:  0", "# ERROR: 0", ...
    unit_pass=$(sed -n 's/^# PASS: *\([0-9][0-9]*\).*/\1/p' "$BUILD_DIR/test-suite.log" | head -n 1)
    f=$(sed -n 's/^# FAIL: *\([0-9][0-9]*\).*/\1/p' "$BUILD_DIR/test-suite.log" | head -n 1)
    e=$(sed -n 's/^# ERROR: *\([0-9][0-9]*\).*/\1/p' "$BUILD_DIR/test-suite.log" | head -n 1)
    x=$(sed -n 's/^# XPASS: *\([0-9][0-9]*\).*/\1/p' "$BUILD_DIR/test-suite.log" | head -n 1)
    unit_pass=${unit_pass:-0}
    unit_fail=$(( ${f:-0} + ${e:-0} + ${x:-0} ))
fi
if [ "$unit_rc" -ne 0 ] && [ "$unit_fail" -eq 0 ]; then
    # make check failed before any test could report (build error)
    unit_fail=1
    echo "make check failed (exit $unit_rc) without a test-suite.log result"
fi

# --------------------------------------------------------- integration tests
echo "== integration tests (pytest tests/integration)"
junit=$(mktemp /tmp/mailgate-junit.XXXXXX.xml) || exit 2
trap 'rm -f "$junit"' EXIT
(
    cd "$SRCDIR" &&
    MG_SBINDIR="$PREFIX/sbin" MG_PREFIX="$PREFIX" \
        MG_SANITIZE="${MG_SANITIZE:-}" MG_BUILD_DIR="$BUILD_DIR" \
        PYTHONDONTWRITEBYTECODE=1 \
        "$PYTHON" -m pytest -q -p no:cacheprovider tests/integration \
        --junitxml="$junit"
)
int_rc=$?
counts=$("$PYTHON" -c '
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception:
    print("0 0 0"); sys.exit(0)
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
t = f = e = s = 0
for su in suites:
    t += int(su.get("tests", 0)); f += int(su.get("failures", 0))
    e += int(su.get("errors", 0)); s += int(su.get("skipped", 0))
print(t - f - e - s, f, e)
' "$junit")
set -- $counts
int_pass=$1
int_fail=$(( $2 + $3 ))
if [ "$int_rc" -ne 0 ] && [ "$int_fail" -eq 0 ]; then
    # pytest failed without results (collection or usage error)
    int_fail=1
    echo "pytest failed (exit $int_rc) without a test result"
fi

# ------------------------------------------------------- quickstart run
# What a new user does first: `./quickstart run` builds, makes an instance
# and answers on its ports (one test; it does a second, plain build).
echo "== quickstart run (smoke)"
qs_pass=0
qs_fail=0
if "$PYTHON" "$SRCDIR/tests/quickstart_smoke.py"; then
    qs_pass=1
else
    qs_fail=1
fi

# ---------------------------------------------------------------- lint
# The code is clang-format clean and cppcheck finds nothing (STYLE.md):
# each counts as one test, so CI fails when either breaks.
echo "== lint (clang-format, cppcheck)"
lint_pass=0
lint_fail=0
cfiles=$(cd "$SRCDIR" && { git ls-files '*.c' '*.h' 2>/dev/null ||
    find core store modules include tests -name '*.[ch]'; })
if (cd "$SRCDIR" && clang-format --dry-run -Werror $cfiles); then
    lint_pass=$((lint_pass + 1))
else
    echo "clang-format: files above are not formatted (clang-format -i FILE)"
    lint_fail=$((lint_fail + 1))
fi
if (cd "$SRCDIR" && cppcheck --std=c11 --library=posix \
        --library=tests/cppcheck.cfg \
        --enable=warning,performance,portability --error-exitcode=1 -q \
        -I include -I core -I store core store modules); then
    lint_pass=$((lint_pass + 1))
else
    lint_fail=$((lint_fail + 1))
fi

# ------------------------------------------------------------------- summary
passed=$(( unit_pass + int_pass + lint_pass + qs_pass ))
failed=$(( unit_fail + int_fail + lint_fail + qs_fail ))
echo "== summary"
echo "unit:        $unit_pass passed, $unit_fail failed"
echo "integration: $int_pass passed, $int_fail failed"
echo "lint:        $lint_pass passed, $lint_fail failed"
echo "quickstart:  $qs_pass passed, $qs_fail failed"
echo "$passed passed, $failed failed"
if [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]; then
    exit 0
fi
exit 1
