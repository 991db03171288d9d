"""Reports of runs: one self-contained HTML page per run that opens offline in any browser.

* :func:`write_report`: ``OUTPUT/report.html`` of a reconstruction (``reconstruct`` writes it at its
  end; ``loftr-sfm report --output DIR [--images DIR]`` for an existing folder): a 3D view of the
  points and cameras (three.js), the summary, per-stage times and options, a table of the images
  (registered or why not), the pair matrix (selected, matched, verified, inliers; weak links) and
  match pictures.
* :func:`write_localization_report`: ``localize_report.html`` beside a poses file (``localize``
  writes it): every query, localized or why not, with its inliers on the retrieved map image.
"""

from .page import MAX_POINTS
from .queries import LOCALIZE_REPORT_FILE, QueryReportConfig, write_localization_report
from .run import REPORT_FILE, ReportConfig, collect, write_report

__all__ = ["LOCALIZE_REPORT_FILE", "MAX_POINTS", "QueryReportConfig", "REPORT_FILE", "ReportConfig", "collect",
           "write_localization_report", "write_report"]
