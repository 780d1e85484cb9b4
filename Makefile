# `sam build` runs these (template.yaml: BuildMethod makefile). The functions get the installed bucketrun
# package, so their handlers are bucketrun.handlers.aws_lambda.*, plus only the core dependencies.
build-DispatchFunction build-SweepFunction:
	python -m pip install --no-deps --target "$(ARTIFACTS_DIR)" .
	python -m pip install --target "$(ARTIFACTS_DIR)" -r requirements.txt
