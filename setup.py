from setuptools import setup

setup(
    name="hoodypipe",
    version="0.1.0",
    description="HTTP pipe server: relay a stream from one sender to N receivers, with a live ?progress side channel",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=["hoodypipe", "hoodypipe.templates", "twisted.plugins"],
    # The templates live in the top-level templates/ folder and ship as
    # package data of hoodypipe.templates.
    package_dir={"hoodypipe.templates": "templates"},
    # *.js and *.css: the pages' shared script and style, and the vendored QR
    # code generator (qrcode.js, with qrcode.LICENSE.txt), inlined into pages.
    package_data={"hoodypipe.templates": ["*.html", "*.txt", "*.js", "*.css"]},
    include_package_data=False,
    install_requires=[
        "twisted[tls]>=24.7",
        "klein>=24.8",
        # Klein's router; hoodypipe's catch-all route converter subclasses it.
        "werkzeug>=3.0",
        "jinja2>=3.1",
        "prometheus-client>=0.20",
        # Twisted-native Redis client, for --store redis:// (see hoodypipe/store.py).
        "txredisapi>=1.6",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "hypothesis>=6",
            "playwright>=1.40",
            "treq>=24.9",
        ],
        # The checks .ci/run makes before the tests (configured in pyproject.toml).
        "lint": [
            "ruff==0.17.6",
            "mypy==2.4.1",
            "mypy-zope==1.0.17",
        ],
    },
    zip_safe=False,
)
