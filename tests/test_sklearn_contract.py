"""scikit-learn's estimator contract: the common checks, and those sklearn runs only on itself."""

import pytest
from sklearn.utils.estimator_checks import (
    check_dataframe_column_names_consistency,
    check_estimators_partial_fit_n_features,
    check_get_feature_names_out_error,
    check_global_output_transform_pandas,
    check_param_validation,
    check_set_output_transform,
    check_set_output_transform_pandas,
    check_transformer_get_feature_names_out,
    check_transformer_get_feature_names_out_pandas,
    parametrize_with_checks,
)

from sksae import SparseAutoencoderOutlierDetector, SparseAutoencoderTransformer


def _instances():
    # Several checks set n_components=1 on the instance: k=1 keeps such codes sparse, and
    # the defaults' k (16 and 4) keeps every latent, with a warning.
    return [
        SparseAutoencoderTransformer(
            n_components=8, activation=activation, k=1, max_iter=5, random_state=0
        )
        for activation in ["topk", "batchtopk", "jumprelu", "relu"]
    ] + [
        SparseAutoencoderTransformer(
            n_components=8, k=1, max_iter=5, transform_algorithm="pursuit", random_state=0
        ),
        SparseAutoencoderOutlierDetector(n_components=8, k=1, max_iter=5, random_state=0),
        SparseAutoencoderOutlierDetector(
            n_components=8, k=1, max_iter=5, contamination=0.1, random_state=0
        ),
        SparseAutoencoderTransformer(max_iter=5, random_state=0),
        SparseAutoencoderOutlierDetector(max_iter=5, random_state=0),
    ]


def _name(estimator):
    name = (
        f"{type(estimator).__name__}-{estimator.activation}-k{estimator.k}"
        f"-{estimator.transform_algorithm}"
    )
    return name + f"-{estimator.contamination}" if hasattr(estimator, "contamination") else name


@parametrize_with_checks(_instances(), expected_failed_checks=lambda est: {}, xfail_strict=True)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


@pytest.mark.parametrize(
    "check",
    [
        check_param_validation,
        check_set_output_transform,
        check_set_output_transform_pandas,
        check_global_output_transform_pandas,
        check_transformer_get_feature_names_out,
        check_transformer_get_feature_names_out_pandas,
        check_get_feature_names_out_error,
        check_dataframe_column_names_consistency,
        check_estimators_partial_fit_n_features,
    ],
    ids=lambda check: check.__name__,
)
@pytest.mark.parametrize("estimator", _instances(), ids=_name)
def test_checks_sklearn_runs_only_on_itself(estimator, check):
    check(type(estimator).__name__, estimator)
