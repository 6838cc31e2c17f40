"""medverify detectors package."""
