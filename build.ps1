# Restore, build, test and publish Converter (Windows PowerShell or pwsh; mirrors README and .ci/run).
param(
    [string]$Configuration = "Release",
    [string]$Runtime = "",
    [switch]$SkipTests
)
$ErrorActionPreference = "Stop"
Set-Location $PSScriptRoot

dotnet restore Converter.sln
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
dotnet build Converter.sln -c $Configuration --no-restore
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }

if (-not $SkipTests) {
    if (Test-Path tests/interop/package-lock.json) {
        Push-Location tests/interop
        npm ci --no-audit --no-fund
        $npm = $LASTEXITCODE
        Pop-Location
        if ($npm -ne 0) { exit $npm }
    }
    dotnet test Converter.sln -c $Configuration --no-build
    if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
}

$publishArgs = @("publish", "src/Converter.Cli", "-c", $Configuration, "-o", "artifacts/converter")
if ($Runtime) { $publishArgs += @("-r", $Runtime, "--self-contained", "false") }
dotnet @publishArgs
exit $LASTEXITCODE
