"""Model serving: one predictor core under every protocol.

``model`` loads a version and runs it (ONNX Runtime or the native model), ``batching`` groups
concurrent requests, ``pool`` keeps loaded versions, ``routing`` turns an endpoint's desired
state into a plan (weights, shadow, fallback), ``core`` answers predictions, ``reconciler``
polls the registry and swaps plans, ``http`` is the lean ASGI layer and ``protocols/`` adapt
native, Open Inference v2, MLflow and KServe v1 bodies to the core. Build the app with
:func:`mlharbor.serving.app.create_serving_app`.
"""
