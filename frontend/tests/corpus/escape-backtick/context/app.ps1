Write-Host hi
