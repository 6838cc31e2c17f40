"""medverify provenance package."""
