"""Wire protocols over the one predictor core: native, Open Inference v2, MLflow, KServe v1."""
