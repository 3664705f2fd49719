"""Deployment: export to ONNX, int8, the torch-free ONNX predictor, calibration, prediction.

``types`` holds what the paths share (preprocessing, prediction rows and the one batch
loop that turns image files into rows); ``onnx_predict`` is the torch-free backend and
``predict`` the checkpoint (torch) backend of that loop; ``export`` and ``int8`` write
ONNX graphs; ``calibrate`` picks a two-class operating point. Nothing below this package
(engine, models, data) imports it.
"""
