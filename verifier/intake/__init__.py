"""PACS intake: every upload is checked before it reaches the archive (DICOM gateway, Orthanc plugin, HTTP API).

:mod:`verifier.intake.decide` is the part every channel shares: bytes and a peer in, one decision and one audit
record out.
"""
