"""Clinical values beside one patient's images: when the bundle (a 2D image bundle or a CT
patch bundle) holds a fusion model, the fused score and its decision sit beside the image-only
ones; when a value the fusion needs is missing or refused, the image-only result stands and the
diagnosis says why."""

from __future__ import annotations

from collections.abc import Mapping

from cadx.bundle import PatchModelBundle
from cadx.decide.exam import exam_probability
from cadx.diagnose import images, patient
from cadx.diagnose.images import ImageDiagnosis
from cadx.diagnose.patient import Diagnosis
from cadx.image_bundle import ImageModelBundle
from cadx.io.clinical import (
    OUT_OF_RANGE_HINT,
    ClinicalRow,
    schema_from_columns,
    validate_clinical,
)


def _image_only_score(bundle: ImageModelBundle | PatchModelBundle,
                      diagnosis: ImageDiagnosis | Diagnosis) -> float | None:
    """The score the fusion model takes, in [0, 1]: a 2D bundle's exam score as a probability,
    a CT bundle's patient score (None when no organ was found, so nothing was scored)."""
    if isinstance(bundle, PatchModelBundle):
        return diagnosis.patient_score
    return float(exam_probability([diagnosis.exam_score], bundle.aggregation)[0])


def add_fusion(bundle: ImageModelBundle | PatchModelBundle,
               diagnosis: ImageDiagnosis | Diagnosis,
               clinical: Mapping[str, str], source: str = "--clinical",
               ) -> ImageDiagnosis | Diagnosis:
    """Fill `diagnosis.fusion` from the raw `clinical` values (column -> text, e.g. from
    ``--clinical age=54,device=GE`` or the service's `clinical` form field, named by `source`
    in the messages) and return the diagnosis: a 2D exam's (`ImageDiagnosis`) with a 2D
    bundle, a CT patient's (`Diagnosis`) with a patch bundle."""
    clinical = {k.strip().lower(): str(v) for k, v in clinical.items() if str(v).strip()}
    fusion = bundle.fusion
    if fusion is None:
        if clinical:
            diagnosis.notes.append("clinical values ignored: this model has no fusion model "
                                   "(cadx fuse adds one)")
        return diagnosis
    unused = sorted(set(clinical) - set(fusion.columns))
    if unused:
        diagnosis.notes.append(f"clinical value(s) not used by the fusion model: "
                               f"{', '.join(unused)} (it uses {', '.join(fusion.columns)})")
    schema = schema_from_columns({c: fusion.column_specs.get(c, {"kind": fusion.kinds[c]})
                                  for c in fusion.columns})
    given = {c: clinical[c] for c in fusion.columns if c in clinical}
    validation = validate_clinical([ClinicalRow(source, diagnosis.patient_id, given)],
                                   "clinical values", schema, columns=list(given))
    values = validation.patients.get(diagnosis.patient_id, {})
    errors = [error.removesuffix(OUT_OF_RANGE_HINT) for error in validation.errors]
    reason = "; ".join(errors) if errors else fusion.missing_reason(values)
    exam = _image_only_score(bundle, diagnosis)
    result: dict[str, object] = {
        "columns": list(fusion.columns), "values": {c: values.get(c) for c in fusion.columns},
        "units": fusion.units, "threshold": fusion.threshold, "model": fusion.describe(),
        "image_only_score": None if exam is None else round(exam, 6), "score": None,
        "decision": None, "not_fused": None}
    if exam is None:
        result["not_fused"] = "not fused: the organ was not found, so nothing was scored"
        diagnosis.notes.append(str(result["not_fused"]))
    elif reason is not None:
        result["not_fused"] = f"image-only score given: {reason}"
        diagnosis.notes.append(str(result["not_fused"]))
    else:
        score = fusion.predict(exam, values)
        words = patient if isinstance(bundle, PatchModelBundle) else images
        result["score"] = round(score, 6)
        result["decision"] = words.POSITIVE if score > fusion.threshold else words.NEGATIVE
    diagnosis.fusion = result
    return diagnosis
