"""The conformance plugin (``pipegate_conformance.plugin``) is registered as a pytest11
entry point of this package, so pytest loads it before parsing the command line and
its options work in every invocation. With ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set, load
it with ``-p pipegate_conformance.plugin``."""
