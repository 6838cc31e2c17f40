"""medverify verifier package."""
