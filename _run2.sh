#!/bin/bash
# Call 2 (eleventh session): the fp8 KV cache integration (branch fp8kv-int): 90a build with tests, ctest,
# compute-sanitizer (4 tools) on the fp8-cache and decode calls, pytest kvcache, decode bench, NUnit fp8/decode.
cd "$(dirname "$0")"
exec > >(tee $OUT/run2.txt) 2>&1
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
cmake -S . -B build/cand -DFA_CUDA_ARCHS=90a -DCMAKE_CUDA_FLAGS=-Xptxas=-v > $OUT/cmake.log 2>&1
if ! cmake --build build/cand -j16 > /tmp/build.log 2>&1; then grep -B2 -A12 -E "error" /tmp/build.log | head -100; exit 1; fi
el built
python3 _ptxregs.py /tmp/build.log 'decode_kernel' 2>/dev/null | head -60
(cd build/cand && timeout 240 ctest --timeout 200 > $OUT/ctest.txt 2>&1; echo "ctest rc=$?"); grep -E "tests passed|Failed|\*\*\*" $OUT/ctest.txt | head
grep -E "c_decode_test:|FAIL" build/cand/Testing/Temporary/LastTest.log | head -20
el ctest
for tool in memcheck racecheck synccheck initcheck; do
  extra=""; [ $tool = racecheck ] && extra="--racecheck-report all"
  timeout 150 compute-sanitizer --tool $tool $extra --error-exitcode 9 build/cand/sanitize_driver --filter decode > /tmp/san_$tool.txt 2>&1; echo "$tool rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' /tmp/san_$tool.txt | tail -1); $(grep -E 'SAN-DRIVER' /tmp/san_$tool.txt | tail -1)"
done
cp /tmp/san_memcheck.txt $OUT/san_memcheck.txt
el sanitizers
export FLASH_ATTENTION_NATIVE_PATH=$PWD/build/cand/libflash_attention.so
(cd python && timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider -k "kvcache" 2>&1 | tail -4)
el pytest
timeout 200 python3 bench/decode.py --lib build/cand/libflash_attention.so --out $OUT/decode.json > $OUT/decode.txt 2>&1; echo "decode bench rc=$?"; tail -30 $OUT/decode.txt
el bench
tar -C bundle -xJf bundle/app.tar.xz 2>/dev/null
timeout 200 bundle/app/FlashAttention.Tests --settings bundle/app/FlashAttention.Tests.runsettings --filter "FullyQualifiedName~Float8KvCache|FullyQualifiedName~DecodeFloat8Cache|FullyQualifiedName~DecodeServing|FullyQualifiedName~DecodeRotary|FullyQualifiedName~DecodeAccuracy|FullyQualifiedName~Float8Forward|FullyQualifiedName~KvCache|FullyQualifiedName~DecodeValidation" > $OUT/nunit.txt 2>&1; echo "nunit rc=$?"
grep -E "^failed|total:|failed:|succeeded:|skipped:" $OUT/nunit.txt | head -30
el nunit
