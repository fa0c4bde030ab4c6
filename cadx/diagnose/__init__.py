"""The computer-aided-diagnosis path for a new patient."""
