"""`cadx demo`'s defaults test on >= 40 patients (issue 14), so its intervals mean something."""

from cadx.cli import build_parser
from cadx.synth.ct_phantom import CohortSpec, _cohort_plan
from cadx.train.splits import split_patients
from cadx.workflows import DEMO_CONFIG, DEMO_PATIENTS


def test_the_default_demo_holds_out_at_least_40_test_patients():
    args = build_parser().parse_args(["demo"])
    assert args.patients == DEMO_PATIENTS
    plan = _cohort_plan(CohortSpec(n_patients=args.patients, seed=args.seed))
    train = DEMO_CONFIG.train
    split = split_patients([f"p{i}" for i in range(len(plan))], [d is not None for d in plan],
                           train.validation_fraction, train.test_fraction, train.seed)
    assert len(split.test) >= 40
    # and no fewer training patients than the 36 of the former 60-patient demo
    assert len(split.train) >= 36
