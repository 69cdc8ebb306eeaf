#!/usr/bin/env pwsh
# build.ps1 - build, test, bundle and benchmark FlashAttention.Interop (PowerShell 7).
#
# The same subcommands as build.sh, implemented in PowerShell. Every step prints
# "==> <step>: <what>" before it runs and "FAILED: <step>" when it fails; the script then exits non-zero.
# Run it with the repository's PowerShell tool:  dotnet tool restore; dotnet tool run pwsh -NoProfile -File build.ps1 <command>
# (no param() block on purpose: options such as --check and -DFA_CUDA_ARCHS=80 arrive untouched in $args).

Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'

$Root = $PSScriptRoot
Set-Location $Root

$Sln = 'FlashAttention.Interop.sln'
$NativeBuildDir = if ($env:FA_NATIVE_BUILD_DIR) { $env:FA_NATIVE_BUILD_DIR } else { 'build/native' }
$NativeArtifacts = 'artifacts/native'
$LibName = 'libflash_attention.so'
$TestsProject = 'tests/FlashAttention.Tests/FlashAttention.Tests.csproj'
$TestsDll = 'tests/FlashAttention.Tests/bin/Release/net10.0/FlashAttention.Tests.dll'
$DemoProject = 'managed/FlashAttention.Demo/FlashAttention.Demo.csproj'
$TrainingProject = 'managed/FlashAttention.Training/FlashAttention.Training.csproj'
# The decode sample; bundled and run by gpu-test only where its folder exists (its project: the folder's
# .csproj; its executable: that project's name).
$GenerateDir = 'managed/FlashAttention.Generate'
$BenchProject = 'bench/FlashAttention.Bench/FlashAttention.Bench.csproj'
$GeneratorProject = 'bindings/Generator'
$GeneratorRsp = '@bindings/generate.rsp'
$BundleDir = 'bundle/app'
$BundleTar = 'bundle/app.tar.xz'
$Jobs = [Environment]::ProcessorCount

$env:DOTNET_CLI_TELEMETRY_OPTOUT = '1'
$env:DOTNET_NOLOGO = '1'
$env:DOTNET_SKIP_FIRST_TIME_EXPERIENCE = '1'

$script:CurrentStep = ''
$script:Sum = @{ Passed = 0; Failed = 0; Skipped = 0 }

function Show-Usage {
    @'
Usage: dotnet tool run pwsh -NoProfile -File build.ps1 <command> [options]

Commands (the same as ./build.sh):
  deps              Check the .NET SDK (>= 10), install the CUDA toolkit (Debian non-free), CMake,
                    python3 and clang-14 where missing, restore NuGet packages and the local dotnet tools.
  build [-DX=Y...]  Build the native library (build/native), copy it to artifacts/native/, then build the
                    solution (Release). -D options go to CMake, others to dotnet build.
  test              Build, then run ctest, the bindings check, the NUnit tests and the Python package's
                    CPU tests; each distinct skip reason is printed once with its count; the last line
                    is "N passed, N failed, N skipped".
  bindings [--check]
                    Regenerate the P/Invoke layer from the C header (--check: fail when it is stale).
  demo [args...]    Build and run the demo (the main job).
  bundle            Publish tests, demo, training sample (and the decode sample where
                    managed/FlashAttention.Generate exists) and benchmark self-contained (linux-x64) into
                    bundle/app and pack bundle/app.tar.xz for the GPU machine.
  gpu-test          On the GPU machine: native build for sm_80 + sm_90a, ctest, bundled tests, demo,
                    training sample (and decode sample), compute-sanitizer (memcheck, racecheck,
                    synccheck, initcheck over every kernel: tools/run_sanitizers.py), bench/run.py (fwd,
                    bwd, decode rows); logs in $OUT (else build/gpu-test); a table comes last.
                    FA_GPU_TEST_ONLY: tests, sanitize, bench or a comma list (default: all three).
  pack              dotnet pack the managed library with runtimes/linux-x64/native/libflash_attention.so,
                    then check each package's description, license, readme and tags (the repository
                    URL comes from git remote origin, or FA_REPOSITORY_URL).
  wheel             Build the Python package (python/, import flash_attn_interop) as a wheel with
                    libflash_attention.so inside -> artifacts/python/.
  help              Show this text.
'@ | Write-Host
}

# ---- helpers --------------------------------------------------------------------------------------

function Step([string]$Name, [string]$What) {
    $script:CurrentStep = $Name
    Write-Host "==> ${Name}: $What"
}

# Runs a native command; throws (reported as FAILED: <step>) when it exits non-zero.
function Exec([string]$File, [string[]]$Arguments = @()) {
    & $File @Arguments
    if ($LASTEXITCODE -ne 0) { throw "'$File $($Arguments -join ' ')' exited with code $LASTEXITCODE" }
}

# Runs a native command and returns its exit code (for the test runners, which go on after a failure).
function Invoke-Tee([string]$File, [string[]]$Arguments, [string]$Log) {
    & $File @Arguments 2>&1 | ForEach-Object { "$_" } | Tee-Object -FilePath $Log | Out-Host
    return $LASTEXITCODE
}

function Test-Command([string]$Name) { return $null -ne (Get-Command $Name -CommandType Application -ErrorAction SilentlyContinue) }

function Invoke-AsRoot([string]$File, [string[]]$Arguments) {
    $uid = (& id -u)
    if ($uid -eq '0') { Exec $File $Arguments }
    elseif (Test-Command 'sudo') { Exec 'sudo' (@($File) + $Arguments) }
    else { throw "need root (or sudo) to run: $File $($Arguments -join ' ')" }
}

if (-not (Test-Command 'nvcc') -and (Test-Path '/usr/local/cuda/bin/nvcc')) {
    $env:PATH = "/usr/local/cuda/bin$([IO.Path]::PathSeparator)$env:PATH"
}

function Get-NvccVersion {
    if (-not (Test-Command 'nvcc')) { return $null }
    $text = (& nvcc --version) -join "`n"
    if ($text -match 'release (\d+)\.(\d+)') { return [version]"$($Matches[1]).$($Matches[2])" }
    return $null
}

function Get-DotnetMajor {
    if (-not (Test-Command 'dotnet')) { return 0 }
    $v = (& dotnet --version 2>$null)
    if ("$v" -match '^(\d+)\.') { return [int]$Matches[1] }
    return 0
}

# ---- deps -----------------------------------------------------------------------------------------

function Add-DebianNonFreeSources {
    $list = '/etc/apt/sources.list.d/fa-nonfree.sources'
    if (Test-Path $list) { Write-Host "    $list already present"; return }
    $codename = 'bookworm'
    foreach ($line in Get-Content '/etc/os-release') {
        if ($line -match '^VERSION_CODENAME=(.+)$') { $codename = $Matches[1].Trim('"') }
    }
    $system = '/etc/apt/sources.list.d/debian.sources'
    $uris = $null; $signed = $null
    if (Test-Path $system) {
        # The first stanza: the lines before the first blank line.
        foreach ($line in Get-Content $system) {
            if ($line.Trim() -eq '') { break }
            if (-not $uris -and $line -match '^URIs:') { $uris = $line }
            if (-not $signed -and $line -match '^Signed-By:') { $signed = $line }
        }
    }
    elseif (Test-Path '/etc/apt/sources.list') {
        foreach ($line in Get-Content '/etc/apt/sources.list') {
            if ($line -match '^deb\s+(?:\[[^\]]*\]\s+)?(\w+://\S+)') { $uris = "URIs: $($Matches[1])"; break }
        }
    }
    if (-not $uris) { throw "cannot find the Debian mirror (no URIs: line in $system)" }
    $text = @('Types: deb', $uris, "Suites: $codename", 'Components: contrib non-free')
    if ($signed) { $text += $signed }
    Write-Host "    writing $list ($uris, $codename contrib non-free)"
    $tmp = [IO.Path]::GetTempFileName()
    Set-Content -Path $tmp -Value $text
    Invoke-AsRoot 'cp' @($tmp, $list)
    Invoke-AsRoot 'chmod' @('644', $list)
    Remove-Item $tmp
}

function Invoke-Deps {
    Step 'deps-dotnet' 'check the .NET SDK (>= 10)'
    if ((Get-DotnetMajor) -lt 10) {
        throw ".NET 10 SDK required. Install it: curl -sSL https://dot.net/v1/dotnet-install.sh | bash -s -- --channel 10.0 " +
              "(or see https://learn.microsoft.com/dotnet/core/install/linux-debian)"
    }
    Write-Host "    dotnet $(& dotnet --version)"

    $isDebian = (Test-Path '/etc/debian_version') -and (Test-Command 'apt-get')
    $packages = [Collections.Generic.List[string]]::new()

    Step 'deps-cuda' 'check the CUDA toolkit (nvcc)'
    if (Test-Command 'nvcc') { Write-Host "    nvcc $(Get-NvccVersion)" }
    elseif ($isDebian) { Add-DebianNonFreeSources; $packages.Add('nvidia-cuda-toolkit') }
    else { throw 'nvcc not found; install the CUDA toolkit (>= 11.8) and put nvcc on PATH' }

    Step 'deps-tools' 'check cmake, make, python3 and clang-14'
    foreach ($tool in 'cmake', 'make', 'python3', 'clang-14') {
        if (-not (Test-Command $tool)) { $packages.Add($tool) }
    }
    # The Python package's tests (pytest) and its wheel (setuptools, wheel, pip).
    if (-not (Get-PythonWith @('pytest'))) { $packages.Add('python3-pytest') }
    if (-not (Get-PythonWith @('setuptools', 'wheel', 'pip'))) { $packages.AddRange([string[]]@('python3-setuptools', 'python3-wheel', 'python3-pip')) }
    if ($packages.Count -gt 0) {
        if (-not $isDebian) { throw "missing: $($packages -join ' '); install them with your package manager" }
        Step 'deps-apt' "apt-get install $($packages -join ' ')"
        $env:DEBIAN_FRONTEND = 'noninteractive'
        Invoke-AsRoot 'apt-get' @('update')
        Invoke-AsRoot 'apt-get' (@('install', '-y', '--no-install-recommends') + $packages)
    }
    if (-not (Test-Command 'nvcc')) { throw 'nvcc is still missing after installing the toolkit' }

    Step 'deps-restore' "dotnet restore $Sln and dotnet tool restore"
    Exec 'dotnet' @('restore', $Sln)
    Exec 'dotnet' @('tool', 'restore')
}

function Invoke-EnsureDeps {
    if ((Get-DotnetMajor) -lt 10 -or -not (Test-Command 'nvcc') -or -not (Test-Command 'cmake') -or -not (Test-Command 'make')) {
        Write-Host "==> deps: tools missing, running 'deps' first"
        Invoke-Deps
    }
}

# ---- native ---------------------------------------------------------------------------------------

function Invoke-NativeBuild([string[]]$CMakeExtra = @(), [string]$Log = $null) {
    $nv = Get-NvccVersion
    if (-not $nv) { throw 'nvcc not found (run deps)' }
    $cmakeArgs = @('-S', '.', '-B', $NativeBuildDir, '-DCMAKE_BUILD_TYPE=Release')
    if ($nv -ge [version]'12.3') {
        $archs = if ($env:FA_CUDA_ARCHS) { $env:FA_CUDA_ARCHS } else { '80;90a' }
    }
    else {
        $archs = if ($env:FA_CUDA_ARCHS) { $env:FA_CUDA_ARCHS } else { '80' }
        # nvcc < 12 does not accept the distribution's g++ 12; clang-14 it does.
        if ($nv -lt [version]'12.0' -and (Test-Command 'clang++-14')) {
            $cmakeArgs += @('-DCMAKE_CUDA_HOST_COMPILER=clang++-14', '-DCMAKE_CXX_COMPILER=clang++-14', '-DCMAKE_C_COMPILER=clang-14')
        }
    }
    $cmakeArgs += "-DFA_CUDA_ARCHS=$archs"
    if ($env:CI -eq 'true') { $cmakeArgs += '-DFA_WARNINGS_AS_ERRORS=ON' }
    $cmakeArgs += $CMakeExtra

    Step 'native-configure' "cmake (nvcc $nv, archs $archs) -> $NativeBuildDir"
    if ($Log) {
        & cmake @cmakeArgs *> $Log
        if ($LASTEXITCODE -ne 0) { Get-Content $Log -Tail 40 | Out-Host; throw "cmake configure failed (log: $Log)" }
    }
    else { Exec 'cmake' $cmakeArgs }

    Step 'native-build' "cmake --build $NativeBuildDir -j$Jobs"
    if ($Log) {
        & cmake --build $NativeBuildDir "-j$Jobs" *>> $Log
        if ($LASTEXITCODE -ne 0) { Select-String -Path $Log -Pattern 'error' -Context 2, 6 | Select-Object -Last 20 | Out-Host; throw "native build failed (log: $Log)" }
    }
    else { Exec 'cmake' @('--build', $NativeBuildDir, "-j$Jobs") }

    Step 'native-copy' "copy $LibName to $NativeArtifacts/"
    $lib = Get-ChildItem -Path $NativeBuildDir -Recurse -Filter $LibName -ErrorAction SilentlyContinue |
        Where-Object { $_.FullName -notmatch '[\\/]CMakeFiles[\\/]' } | Select-Object -First 1
    if (-not $lib) { throw "$LibName not found under $NativeBuildDir" }
    New-Item -ItemType Directory -Force -Path $NativeArtifacts | Out-Null
    Copy-Item -Force -Path $lib.FullName -Destination (Join-Path $NativeArtifacts $LibName)
    Write-Host "    $($lib.FullName) -> $NativeArtifacts/$LibName"
}

function Invoke-Build([string[]]$Rest = @()) {
    $cmakeExtra = @($Rest | Where-Object { $_ -like '-D*' })
    $dotnetExtra = @($Rest | Where-Object { $_ -notlike '-D*' })
    Invoke-EnsureDeps
    Invoke-NativeBuild $cmakeExtra
    Step 'dotnet-build' "dotnet build $Sln -c Release"
    Exec 'dotnet' (@('build', $Sln, '-c', 'Release', '-nologo') + $dotnetExtra)
}

# ---- test -----------------------------------------------------------------------------------------

# The first Python 3 (python3 on PATH, then Debian's /usr/bin/python3) that imports every module named; $null if none.
function Get-PythonWith([string[]]$Modules) {
    foreach ($py in 'python3', '/usr/bin/python3') {
        $cmd = Get-Command $py -CommandType Application -ErrorAction SilentlyContinue | Select-Object -First 1
        if ($null -eq $cmd) { continue }
        & $cmd.Source -c "import $($Modules -join ',')" *> $null
        if ($LASTEXITCODE -eq 0) { return $cmd.Source }
    }
    return $null
}

# Runs the Python package's tests (python/tests) with pytest -m $Marker against $Lib; counts from pytest's -q summary
# line (errors count as failed); pytest missing is one failure naming the fix.
function Invoke-Pytest([string]$Log, [string]$Marker, [string]$Lib) {
    $py = Get-PythonWith @('pytest')
    if (-not $py) {
        "    pytest not found for python3 or /usr/bin/python3 (./build.ps1 deps installs python3-pytest)" | Tee-Object -FilePath $Log | Out-Host
        Add-Counts 'pytest' 0 1 0
        return
    }
    $env:FLASH_ATTENTION_NATIVE_PATH = $Lib
    $rc = Invoke-Tee $py @('-m', 'pytest', 'python/tests', '-q', '-rs', '-m', $Marker, '-p', 'no:cacheprovider') $Log
    $summary = @(Get-Content $Log | Where-Object { $_ -match '^=*\s*\d+ (passed|failed|skipped|errors?|deselected)' } | Select-Object -Last 1)
    $n = @{ passed = 0; failed = 0; skipped = 0; error = 0 }
    if ($summary.Count -gt 0) {
        foreach ($m in [regex]::Matches($summary[0], '(\d+) (passed|failed|skipped|error)')) { $n[$m.Groups[2].Value] = [int]$m.Groups[1].Value }
    }
    $failed = $n.failed + $n.error
    if ($rc -ne 0 -and $rc -ne 5 -and $failed -eq 0) { $failed = 1 }
    Add-Counts 'pytest' $n.passed $failed $n.skipped
    Write-PytestSkipReasons $Log
}

function Add-Counts([string]$What, [int]$Passed, [int]$Failed, [int]$Skipped) {
    Write-Host "    ${What}: $Passed passed, $Failed failed, $Skipped skipped"
    $script:Sum.Passed += $Passed
    $script:Sum.Failed += $Failed
    $script:Sum.Skipped += $Skipped
}

function Invoke-CTest([string]$Log, [string]$Junit) {
    Remove-Item -Force -ErrorAction SilentlyContinue $Junit
    $junitFull = [IO.Path]::GetFullPath($Junit)
    $rc = Invoke-Tee 'ctest' @('--test-dir', $NativeBuildDir, '--output-on-failure', '--output-junit', $junitFull) $Log
    $tests = 0; $failures = 0; $skipped = 0
    if (Test-Path $Junit) {
        $suite = ([xml](Get-Content -Raw $Junit)).testsuite
        $tests = [int]$suite.tests; $failures = [int]$suite.failures; $skipped = [int]$suite.skipped
    }
    # ctest failed without a failing test (no tests, configuration error): one failure.
    if ($rc -ne 0 -and $failures -eq 0) { $failures = 1 }
    Add-Counts 'ctest' ([Math]::Max(0, $tests - $failures - $skipped)) $failures $skipped
    if (Test-Path $Junit) { Write-CTestSkipReasons $Junit }
}

# Prints each distinct skip reason of a ctest JUnit file once, with its count and the tests: a skipped test's reason is
# the last line it printed, without a "skipped:" or "SAN-SKIP" prefix.
function Write-CTestSkipReasons([string]$Junit) {
    $reasons = [ordered]@{}
    foreach ($tc in ([xml](Get-Content -Raw $Junit)).SelectNodes('//testcase')) {
        if ($tc.GetAttribute('status') -ne 'notrun' -and -not $tc.SelectSingleNode('skipped')) { continue }
        $out = $tc.SelectSingleNode('system-out')
        $lines = @(if ($out) { $out.InnerText -split "`n" | ForEach-Object { $_.Trim() } | Where-Object { $_ } })
        $reason = if ($lines.Count -gt 0) { $lines[-1] -replace '^(SAN-SKIP|skipped:|SKIP:?)\s*', '' } else { '(no reason printed)' }
        if (-not $reasons.Contains($reason)) { $reasons[$reason] = [Collections.Generic.List[string]]::new() }
        $reasons[$reason].Add($tc.GetAttribute('name'))
    }
    foreach ($r in @($reasons.GetEnumerator() | Sort-Object { -$_.Value.Count })) {
        $count = $r.Value.Count
        Write-Host "    $count test$(if ($count -ne 1) { 's' }) skipped ($($r.Value -join ', ')): $($r.Key)"
    }
}

# Prints each distinct skip reason of a pytest -rs log ("SKIPPED [N] FILE:LINE: REASON") once, with its count.
function Write-PytestSkipReasons([string]$Log) {
    $counts = @{}
    foreach ($line in Get-Content $Log) {
        if ($line -match '^SKIPPED \[(\d+)\] \S+: (.*)$') { $counts[$Matches[2]] = [int]$counts[$Matches[2]] + [int]$Matches[1] }
    }
    foreach ($r in @($counts.GetEnumerator() | Sort-Object { -$_.Value })) {
        Write-Host "    $($r.Value) test$(if ($r.Value -ne 1) { 's' }) skipped: $($r.Key)"
    }
}

# The skipped tests of an NUnit log written with --show-test-results failed,skipped, grouped by reason (Count,
# Reason; the most frequent first). A skipped test's block is "skipped NAME (TIME)", then its reason indented by two
# spaces (NUnit's "OneTimeSetUp: SetUp : " prefix dropped), then its output indented further.
function Get-SkipReasons([string]$Log) {
    $counts = [ordered]@{}
    $state = @{ Want = $false }
    $add = { param($reason) if ($counts.Contains($reason)) { $counts[$reason] += 1 } else { $counts[$reason] = 1 } }
    foreach ($line in @(Get-Content $Log)) {
        if ($line -match '^skipped ') {
            if ($state.Want) { & $add '(no reason given)' }
            $state.Want = $true
        }
        elseif ($state.Want -and $line -match '^  [^ ]' -and $line -notmatch '^  Standard (output|error)$') {
            & $add (($line.Substring(2) -replace '^OneTimeSetUp: ', '') -replace '^SetUp : ', '')
            $state.Want = $false
        }
        elseif ($line -match '^[^ ]') {
            if ($state.Want) { & $add '(no reason given)' }
            $state.Want = $false
        }
    }
    if ($state.Want) { & $add '(no reason given)' }
    $counts.GetEnumerator() | ForEach-Object { [pscustomobject]@{ Count = [int]$_.Value; Reason = [string]$_.Key } } |
        Sort-Object -Property @{ Expression = 'Count'; Descending = $true }, @{ Expression = 'Reason'; Descending = $false }
}

# Prints each distinct skip reason of an NUnit log once, with its count.
function Write-SkipReasons([string]$Log) {
    foreach ($r in @(Get-SkipReasons $Log)) {
        Write-Host "    $($r.Count) test$(if ($r.Count -ne 1) { 's' }) skipped: $($r.Reason)"
    }
}

# Runs the test executable; the log gets every failed and skipped test's result block (the skip reasons), the
# console the same without the skipped blocks, then one line per distinct skip reason.
function Invoke-Mtp([string]$Log, [string]$File, [string[]]$Arguments) {
    $state = @{ Skip = $false }
    & $File @($Arguments + @('--show-test-results', 'failed,skipped', '--no-ansi', '--progress', 'off')) 2>&1 | ForEach-Object { "$_" } |
        Tee-Object -FilePath $Log | Where-Object {
            if ($_ -match '^skipped ') { $state.Skip = $true; return $false }
            if ($state.Skip -and $_ -match '^ ') { return $false }
            $state.Skip = $false
            return $true
        } | Out-Host
    $rc = $LASTEXITCODE
    $text = Get-Content $Log
    $get = { param($key) $m = $text | Select-String -Pattern "^\s*${key}:\s*(\d+)" | Select-Object -Last 1; if ($m) { [int]$m.Matches[0].Groups[1].Value } else { 0 } }
    $passed = & $get 'succeeded'; $failed = & $get 'failed'; $skipped = & $get 'skipped'
    # The runner failed without a failing test (crash, no tests, bad option): one failure.
    if ($rc -ne 0 -and $failed -eq 0) { $failed = 1 }
    Add-Counts 'nunit' $passed $failed $skipped
    Write-SkipReasons $Log
}

function Write-Summary {
    $script:CurrentStep = ''
    Write-Host "$($script:Sum.Passed) passed, $($script:Sum.Failed) failed, $($script:Sum.Skipped) skipped"
}

function Invoke-Test([string[]]$Rest = @()) {
    $logDir = 'build/test'
    New-Item -ItemType Directory -Force -Path $logDir | Out-Null
    try { Invoke-Build $Rest }
    catch {
        Write-Host "FAILED: $script:CurrentStep ($($_.Exception.Message))"
        Write-Host 'FAILED: test (the build failed; nothing was tested)'
        $script:Sum.Failed = 1
        Write-Summary
        exit 1
    }

    Step 'ctest' "ctest --test-dir $NativeBuildDir"
    Invoke-CTest "$logDir/ctest.log" "$logDir/ctest-junit.xml"

    Step 'bindings-check' "dotnet run --project $GeneratorProject -- $GeneratorRsp --check"
    & dotnet run --project $GeneratorProject -c Release --no-launch-profile -- $GeneratorRsp --check | Out-Host
    if ($LASTEXITCODE -eq 0) { Add-Counts 'bindings-check' 1 0 0 } else { Add-Counts 'bindings-check' 0 1 0 }

    Step 'nunit' "dotnet $TestsDll"
    if (-not (Test-Path $TestsDll)) { throw "$TestsDll not found (did the build produce it?)" }
    # Minimal: failures in full; skips counted, and each distinct skip reason printed once with its count.
    Invoke-Mtp "$logDir/nunit.log" 'dotnet' @($TestsDll, '--output', 'Minimal', '--settings', (Join-Path (Split-Path $TestsDll) 'FlashAttention.Tests.runsettings'))

    Step 'pytest' "python3 -m pytest python/tests -m 'not gpu' (the Python package's CPU tests)"
    Invoke-Pytest "$logDir/pytest.log" 'not gpu' ([IO.Path]::GetFullPath((Join-Path $NativeArtifacts $LibName)))

    if ($script:Sum.Failed -ne 0) { Write-Host "FAILED: test ($($script:Sum.Failed) failed; logs in $logDir/)" }
    Write-Summary
    exit ([int]($script:Sum.Failed -ne 0))
}

# ---- bindings, demo, bundle, gpu-test, pack --------------------------------------------------------

function Invoke-Bindings([string[]]$Rest = @()) {
    $check = @()
    foreach ($a in $Rest) {
        if ($a -eq '--check') { $check = @('--check') }
        else { throw "bindings: unknown option '$a' (expected --check)" }
    }
    Step 'bindings' "dotnet run --project $GeneratorProject -- $GeneratorRsp $($check -join ' ')"
    Exec 'dotnet' (@('run', '--project', $GeneratorProject, '-c', 'Release', '--no-launch-profile', '--', $GeneratorRsp) + $check)
}

function Invoke-Demo([string[]]$Rest = @()) {
    Invoke-EnsureDeps
    Invoke-NativeBuild
    Step 'demo' "dotnet run --project $DemoProject -c Release"
    Exec 'dotnet' (@('run', '--project', $DemoProject, '-c', 'Release', '--no-launch-profile', '--') + $Rest)
}

function Invoke-Bundle([string[]]$Rest = @()) {
    Invoke-EnsureDeps
    Invoke-NativeBuild
    Remove-Item -Recurse -Force -ErrorAction SilentlyContinue $BundleDir, $BundleTar
    New-Item -ItemType Directory -Force -Path $BundleDir | Out-Null
    $projects = @($TestsProject, $DemoProject, $TrainingProject, $BenchProject)
    if (Test-Path $GenerateDir -PathType Container) { $projects += Get-GenerateProject }
    foreach ($p in $projects) {
        Step 'bundle-publish' "dotnet publish $p (self-contained linux-x64) -> $BundleDir"
        Exec 'dotnet' (@('publish', $p, '-c', 'Release', '-r', 'linux-x64', '--self-contained', 'true',
                '-p:InvariantGlobalization=true', '-p:UseAppHost=true', '-p:SatelliteResourceLanguages=en', '-o', $BundleDir, '-nologo') + $Rest)
    }
    Step 'bundle-info' "write $BundleDir/BUILD_INFO"
    $commit = (& git rev-parse HEAD 2>$null); if (-not $commit) { $commit = 'unknown' }
    $describe = (& git describe --always --dirty 2>$null); if (-not $describe) { $describe = 'unknown' }
    Set-Content -Path "$BundleDir/BUILD_INFO" -Value @("commit=$commit", "describe=$describe",
        "date=$([DateTime]::UtcNow.ToString('yyyy-MM-ddTHH:mm:ssZ'))")
    Step 'bundle-pack' "tar -cJf $BundleTar"
    Exec 'tar' @('-C', (Split-Path $BundleDir), '-cJf', $BundleTar, (Split-Path $BundleDir -Leaf))
    $unpacked = (Get-ChildItem -Recurse -File $BundleDir | Measure-Object -Sum Length).Sum
    $packed = (Get-Item $BundleTar).Length
    Write-Host ("    {0:N1} MiB unpacked, {1:N1} MiB packed ($BundleTar)" -f ($unpacked / 1MB), ($packed / 1MB))
}

# The decode sample's project file (the first .csproj in $GenerateDir; the expected name if there is none).
function Get-GenerateProject {
    $f = Get-ChildItem -Path $GenerateDir -Filter '*.csproj' -File -ErrorAction SilentlyContinue | Sort-Object Name | Select-Object -First 1
    if ($f) { return "$GenerateDir/$($f.Name)" }
    return "$GenerateDir/FlashAttention.Generate.csproj"
}

# Runs a bundled sample (log in $LogDir/$Name.log, its tail shown); a non-zero exit code, or a missing
# executable, counts as one failure.
function Invoke-BundledSample([string]$Name, [string]$Exe, [string]$What, [string]$LogDir,
        [Collections.Generic.List[string]]$Status) {
    Step $Name "bundled ${Exe}: $What"
    $path = Join-Path $BundleDir $Exe
    if (Test-Path $path) {
        & $path *> "$LogDir/$Name.log"
        $rc = $LASTEXITCODE
        Get-Content "$LogDir/$Name.log" -Tail 12 | Out-Host
    }
    else {
        "    $path not found: the bundle predates it (run bundle again)" | Tee-Object -FilePath "$LogDir/$Name.log" | Out-Host
        $rc = 127
    }
    $Status.Add("${Name}: exit code $rc")
    if ($rc -ne 0) { $script:Sum.Failed++ }
}

# tools/run_sanitizers.py over the native build's sanitize_driver (as build.sh's run_sanitize_step): its counts go
# into $script:Sum, its status lines into $Status, the per-run logs into $LogDir/sanitize-logs.tgz.
function Invoke-Sanitize([string]$LogDir, [Collections.Generic.List[string]]$Status) {
    Step 'sanitize' "compute-sanitizer memcheck, racecheck, synccheck, initcheck over $NativeBuildDir/sanitize_driver"
    $sanDir = 'build/sanitize'
    $summary = "$LogDir/sanitize-summary.txt"
    Remove-Item -Recurse -Force -ErrorAction SilentlyContinue $sanDir, $summary
    $sanArgs = @('tools/run_sanitizers.py', '--driver', "$NativeBuildDir/sanitize_driver", '--logdir', $sanDir,
        '--summary', $summary, '--json', "$LogDir/sanitize.json")
    foreach ($pair in @(@('FA_SAN_TOOLS', '--tools'), @('FA_SAN_SHARDS', '--shards'), @('FA_SAN_JOBS', '--jobs'),
            @('FA_SAN_TIMEOUT', '--timeout'), @('FA_SAN_CONFIRM', '--confirm'))) {
        $value = [Environment]::GetEnvironmentVariable($pair[0])
        if ($value) { $sanArgs += @($pair[1], $value) }
    }
    $env:PYTHONUNBUFFERED = '1'
    & python3 @sanArgs *> "$LogDir/sanitize.log"
    $rc = $LASTEXITCODE
    $log = Get-Content "$LogDir/sanitize.log"
    $at = [array]::FindIndex([string[]]$log, [Predicate[string]] { param($l) $l -like '==> sanitize summary*' })
    if ($at -ge 0) { $log[$at..($log.Count - 1)] | Select-Object -Last 40 | Out-Host }
    if (Test-Path $sanDir) { & tar -czf "$LogDir/sanitize-logs.tgz" -C $sanDir . }
    $lines = @(if (Test-Path $summary) { Get-Content $summary })
    if ($lines.Count -gt 0 -and $lines[0] -match '^passed=(\d+) failed=(\d+) skipped=(\d+)$') {
        $script:Sum.Passed += [int]$Matches[1]
        $script:Sum.Failed += [int]$Matches[2]
        $script:Sum.Skipped += [int]$Matches[3]
        $lines | Select-Object -Skip 1 | ForEach-Object { $Status.Add($_) }
    }
    else {
        $log | Select-Object -Last 20 | Out-Host
        $script:Sum.Failed++
        $Status.Add("sanitize: tools/run_sanitizers.py wrote no summary (exit code $rc; see $LogDir/sanitize.log)")
    }
}

function Invoke-GpuTest {
    $logDir = if ($env:OUT) { $env:OUT } else { 'build/gpu-test' }
    New-Item -ItemType Directory -Force -Path $logDir | Out-Null
    $logDir = (Resolve-Path $logDir).Path
    $status = [Collections.Generic.List[string]]::new()

    # FA_GPU_TEST_ONLY: 'tests' (ctest, NUnit, demo, samples), 'sanitize' (compute-sanitizer), 'bench' (the
    # benchmark), or a comma list of them; empty: all three.
    $parts = @($(if ($env:FA_GPU_TEST_ONLY) { $env:FA_GPU_TEST_ONLY } else { 'tests,sanitize,bench' }) -split ',' |
        Where-Object { $_ })
    foreach ($part in $parts) {
        if ($part -notin @('tests', 'sanitize', 'bench')) {
            throw "FA_GPU_TEST_ONLY: unknown part '$part' (expected tests, sanitize, bench, or a comma list of them)"
        }
    }
    $testsExe = Join-Path $BundleDir 'FlashAttention.Tests'
    $info = Join-Path $BundleDir 'BUILD_INFO'
    # The bundle (the published .NET programs) is needed by the tests and the benchmark, not by the sanitizers.
    if ($parts -contains 'tests' -or $parts -contains 'bench') {
    Step 'gpu-unpack' "unpack $BundleTar"
    if (-not (Test-Path $testsExe) -or ((Test-Path $BundleTar) -and (Test-Path $info) -and
            (Get-Item $BundleTar).LastWriteTime -gt (Get-Item $info).LastWriteTime)) {
        if (-not (Test-Path $BundleTar)) { throw "$BundleTar not found: run 'bundle' on the development machine and carry it" }
        Remove-Item -Recurse -Force -ErrorAction SilentlyContinue $BundleDir
        Exec 'tar' @('-C', (Split-Path $BundleDir), '-xJf', $BundleTar)
    }
    }
    $commit = 'unknown'
    if (Test-Path $info) {
        $line = Get-Content $info | Where-Object { $_ -like 'describe=*' } | Select-Object -First 1
        if ($line) { $commit = $line.Substring('describe='.Length) }
    }

    Invoke-NativeBuild @('-DFA_PTXAS_VERBOSE=ON') "$logDir/native-build.log"
    $lib = (Resolve-Path (Join-Path $NativeArtifacts $LibName)).Path
    $env:FLASH_ATTENTION_NATIVE_PATH = $lib

    if ($parts -contains 'tests') {
    Step 'ctest' "ctest --test-dir $NativeBuildDir (GPU)"
    Invoke-CTest "$logDir/ctest.log" "$NativeBuildDir/ctest-junit.xml" | Out-Null
    Step 'nunit' 'bundled tests (all categories, GPU included)'
    Invoke-Mtp "$logDir/tests.log" $testsExe @('--output', 'Minimal', '--settings', (Join-Path $BundleDir 'FlashAttention.Tests.runsettings')) | Out-Null
    # Only "no device" lets the Gpu tests skip (GpuTestBase: "no CUDA device: ..."); the by-design skips (a head
    # dim or path this build does not serve, no SDK in the bundle, ...) give other reasons. Where the driver lists
    # a GPU, a no-device skip means the tests did not see it: a failure.
    $noDevice = [int](@(Get-SkipReasons "$logDir/tests.log" | Where-Object { $_.Reason -like '*no CUDA device*' }) |
        Measure-Object -Property Count -Sum).Sum
    $gpuListed = (Test-Command 'nvidia-smi') -and @(& nvidia-smi -L 2>$null | Where-Object { "$_" -match '^GPU ' }).Count -gt 0
    if ($noDevice -gt 0 -and $gpuListed) {
        Write-Host "    FAILED: $noDevice Gpu tests skipped for 'no CUDA device' but nvidia-smi -L lists a GPU (see $logDir/tests.log)"
        $script:Sum.Failed++
        $status.Add("nunit: $noDevice Gpu tests skipped for no device on a machine with a GPU: 1 failure")
    }

    Step 'demo' 'bundled demo'
    & (Join-Path $BundleDir 'FlashAttention.Demo') *> "$logDir/demo.log"
    $rc = $LASTEXITCODE
    Get-Content "$logDir/demo.log" -Tail 15 | Out-Host
    $status.Add("demo: exit code $rc")
    if ($rc -ne 0) { $script:Sum.Failed++ }

    Step 'pytest-gpu' "python3 -m pytest python/tests -m gpu (the Python package on the GPU) with $lib"
    $before = $script:Sum.Failed
    Invoke-Pytest "$logDir/pytest-gpu.log" 'gpu' $lib | Out-Null
    $status.Add("pytest-gpu: see $logDir/pytest-gpu.log (failed: $($script:Sum.Failed - $before))")

    Invoke-BundledSample 'training' 'FlashAttention.Training' 'trains one attention layer (Forward + Backward); the loss must fall' $logDir $status
    if (Test-Path $GenerateDir -PathType Container) {
        Invoke-BundledSample 'generate' ([IO.Path]::GetFileNameWithoutExtension((Get-GenerateProject))) 'decodes over a KV cache' $logDir $status
    }
    }

    if ($parts -contains 'sanitize') { Invoke-Sanitize $logDir $status }

    if ($parts -contains 'bench') {
    Step 'bench' 'python3 bench/run.py'
    $env:PYTHONUNBUFFERED = '1'
    # FA_BENCH_ARGS: extra arguments of bench/run.py (e.g. "--baseline-lib build/base/libflash_attention.so").
    $benchExtra = @(if ($env:FA_BENCH_ARGS) { $env:FA_BENCH_ARGS -split '\s+' | Where-Object { $_ } })
    & python3 bench/run.py --lib $lib --bench-exe (Join-Path $BundleDir 'FlashAttention.Bench') --out "$logDir/bench.json" `
        --table "$logDir/bench-table.txt" --png "$logDir/bench.png" --commit $commit @benchExtra *> "$logDir/bench.log"
    $rc = $LASTEXITCODE
    if ($rc -ne 0) { Get-Content "$logDir/bench.log" -Tail 30 | Out-Host; $script:Sum.Failed++ }
    $status.Add("bench: exit code $rc (json: $logDir/bench.json)")
    }

    $script:CurrentStep = ''
    Write-Host "==> gpu-test summary (logs in $logDir)"
    $status | ForEach-Object { Write-Host "    $_" }
    Write-Host "$($script:Sum.Passed) passed, $($script:Sum.Failed) failed, $($script:Sum.Skipped) skipped"
    if (Test-Path "$logDir/bench-table.txt") { Get-Content "$logDir/bench-table.txt" | Out-Host }
    exit ([int]($script:Sum.Failed -ne 0))
}

function Invoke-Pack([string[]]$Rest = @()) {
    Invoke-EnsureDeps
    Invoke-NativeBuild
    $out = 'artifacts/packages'
    # The package version is the C ABI's version (FA_VERSION_* in the header).
    $parts = foreach ($name in 'MAJOR', 'MINOR', 'PATCH') {
        $m = Select-String -Path 'native/include/flash_attention.h' -Pattern "#define FA_VERSION_$name (\d+)" | Select-Object -First 1
        if (-not $m) { throw "FA_VERSION_$name not found in native/include/flash_attention.h" }
        $m.Matches[0].Groups[1].Value
    }
    $version = $parts -join '.'
    # dotnet pack skips a package that is newer than its inputs, whatever the properties given (Version,
    # FA_REPOSITORY_URL): remove this version's packages so that both are written again.
    Remove-Item -Force -ErrorAction SilentlyContinue (Join-Path $out "FlashAttention.Native.$version.nupkg"), (Join-Path $out "FlashAttention.$version.nupkg")
    # The bindings package carries the native library (runtimes/linux-x64/native/); the API package depends on it.
    foreach ($p in 'bindings/FlashAttention.Native/FlashAttention.Native.csproj', 'managed/FlashAttention/FlashAttention.csproj') {
        Step 'pack' "dotnet pack $p (version $version) -> $out"
        Exec 'dotnet' (@('pack', $p, '-c', 'Release', '-o', $out, '-nologo', "-p:Version=$version") + $Rest)
    }
    Step 'pack-native' "add $LibName to the FlashAttention.Native package"
    $nupkg = Get-Item -ErrorAction SilentlyContinue (Join-Path $out "FlashAttention.Native.$version.nupkg")
    if (-not $nupkg) { throw "no FlashAttention.Native package in $out" }
    Exec 'python3' @('tools/add_native_to_nupkg.py', $nupkg.FullName, (Join-Path $NativeArtifacts $LibName), '--rid', 'linux-x64')
    Step 'pack-check' "each package's description, license, readme, tags and repository URL"
    Add-Type -AssemblyName System.IO.Compression.FileSystem
    $lacking = @()
    foreach ($name in "FlashAttention.Native.$version.nupkg", "FlashAttention.$version.nupkg") {
        $path = Join-Path $out $name
        $zip = [IO.Compression.ZipFile]::OpenRead((Resolve-Path $path).Path)
        try {
            $entry = $zip.Entries | Where-Object { $_.FullName -like '*.nuspec' } | Select-Object -First 1
            $reader = [IO.StreamReader]::new($entry.Open())
            try { [xml]$spec = $reader.ReadToEnd() } finally { $reader.Dispose() }
            $meta = $spec.package.metadata
            $get = { param($tag) $n = $meta.SelectSingleNode("*[local-name()='$tag']"); if ($n) { $n.InnerText } else { '' } }
            $missing = @('description', 'license', 'readme', 'tags' | Where-Object { -not (& $get $_).Trim() })
            $readme = & $get 'readme'
            if ($readme -and -not ($zip.Entries | Where-Object { $_.FullName -eq $readme })) { $missing += "the readme file $readme" }
            $r = $meta.SelectSingleNode("*[local-name()='repository']")
            $repo = if ($r -and $r.GetAttribute('url')) { $r.GetAttribute('url') } else { "none (no git remote 'origin'; set FA_REPOSITORY_URL=https://...)" }
            Write-Host "    ${path}: license $(& $get 'license'), readme $readme, repository $repo"
            if ($missing.Count -gt 0) { $lacking += "$path lacks: $($missing -join ', ')" }
        }
        finally { $zip.Dispose() }
    }
    if ($lacking.Count -gt 0) { throw ($lacking -join '; ') }
}

# ---- wheel ----------------------------------------------------------------------------------------

function Invoke-Wheel {
    $out = 'artifacts/python'; $pkg = 'python/src/flash_attn_interop'
    if (-not (Test-Path (Join-Path $NativeArtifacts $LibName))) { Invoke-EnsureDeps; Invoke-NativeBuild }
    Step 'wheel-tools' 'find a python3 with setuptools, wheel and pip'
    $py = Get-PythonWith @('setuptools', 'wheel', 'pip')
    if (-not $py) { throw 'no python3 with setuptools, wheel and pip (./build.ps1 deps installs python3-setuptools python3-wheel python3-pip)' }
    Step 'wheel' "pip wheel python/ with $LibName inside -> $out"
    Copy-Item -Force (Join-Path $NativeArtifacts $LibName) (Join-Path $pkg $LibName)
    New-Item -ItemType Directory -Force -Path $out | Out-Null
    Remove-Item -Recurse -Force -ErrorAction SilentlyContinue 'python/build', 'python/src/flash_attn_interop.egg-info'
    $env:PIP_DISABLE_PIP_VERSION_CHECK = '1'
    try { & $py -m pip wheel --no-deps --no-build-isolation --no-cache-dir -w $out ./python | Out-Host; $rc = $LASTEXITCODE }
    finally {
        Remove-Item -Force -ErrorAction SilentlyContinue (Join-Path $pkg $LibName)
        Remove-Item -Recurse -Force -ErrorAction SilentlyContinue 'python/build', 'python/src/flash_attn_interop.egg-info'
    }
    if ($rc -ne 0) { throw "pip wheel failed (exit code $rc)" }
    Step 'wheel-check' "the wheel holds the package and $LibName"
    $whl = Get-ChildItem "$out/flash_attn_interop-*.whl" | Sort-Object LastWriteTime | Select-Object -Last 1
    $names = & $py -c "import sys, zipfile; print('\n'.join(zipfile.ZipFile(sys.argv[1]).namelist()))" $whl.FullName
    foreach ($need in 'flash_attn_interop/__init__.py', 'flash_attn_interop/_abi.py', "flash_attn_interop/$LibName") {
        if ($names -notcontains $need) { throw "$($whl.FullName) lacks $need" }
    }
    Write-Host "    $($whl.FullName): $($names.Count) files, $LibName inside"
}

# ---- main -----------------------------------------------------------------------------------------

if ($args.Count -lt 1) { Show-Usage; exit 2 }
$command = [string]$args[0]
[string[]]$rest = @($args | Select-Object -Skip 1 | ForEach-Object { [string]$_ })

try {
    switch ($command) {
        'deps' { Invoke-Deps }
        'build' { Invoke-Build $rest }
        'test' { Invoke-Test $rest }
        'bindings' { Invoke-Bindings $rest }
        'demo' { Invoke-Demo $rest }
        'bundle' { Invoke-Bundle $rest }
        'gpu-test' { Invoke-GpuTest }
        'pack' { Invoke-Pack $rest }
        'wheel' { Invoke-Wheel }
        { $_ -in 'help', '-h', '--help' } { Show-Usage }
        default { Write-Host "error: unknown command '$command'"; Show-Usage; exit 2 }
    }
}
catch {
    Write-Host "error: $($_.Exception.Message)"
    if ($script:CurrentStep) { Write-Host "FAILED: $script:CurrentStep" }
    exit 1
}
exit 0
