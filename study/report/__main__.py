"""`python -m study.report STUDY_FOLDER`: rewrite a finished study's results and report from its ledger."""

from study.report.results import main

raise SystemExit(main())
