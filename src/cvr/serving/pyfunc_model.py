"""MLflow "model from code" entry: the file `log_pyfunc_model` logs as `python_model`.

MLflow copies this file into the logged model and runs it on load; it only imports the project's
own `BundleModel` and hands it to `set_model`, so loading the model unpickles nothing.
"""

from mlflow.models import set_model

from cvr.serving.pyfunc import BundleModel

set_model(BundleModel())
