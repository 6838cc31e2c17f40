"""Claims as HL7 FHIR R4 bundles: read them (:mod:`~verifier.claims.fhir.bundle`), cross-check their images against
the Claim, Patient, ImagingStudy, Procedure and diagnoses (:mod:`~verifier.claims.fhir.rules`, with the code tables
of :mod:`~verifier.claims.fhir.tables`), and write the findings back as FHIR (:mod:`~verifier.claims.fhir.export`).

Only :mod:`~verifier.claims.fhir.bundle` and :mod:`~verifier.claims.fhir.export` import ``fhir.resources``, when
they run: importing this package does not.
"""

from verifier.claims.fhir.record import (
    Code,
    FhirClaim,
    FhirPatient,
    FhirProcedure,
    FhirReport,
    FhirSeries,
    FhirStudy,
    When,
)

__all__ = ["Code", "FhirClaim", "FhirPatient", "FhirProcedure", "FhirReport", "FhirSeries", "FhirStudy", "When"]
