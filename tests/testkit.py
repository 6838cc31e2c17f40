"""Constants shared by tests. Import from here, never from ``conftest`` (several conftest modules exist, and
importing one by name picks whichever pytest loaded first)."""

from __future__ import annotations

#: Test-only key store passphrase; the secret-scanning tests check that it never reaches any output.
TEST_KEY_PASSPHRASE = "test-passphrase-Zq9v7XkP3m"
