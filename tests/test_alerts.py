"""
Tests for C{etc/prometheus/smtpmx-alerts.yml}: its alerts are there and
watch metrics smtpmx exports; with Prometheus's C{promtool} installed, the
file is checked and its unit tests (C{tests/smtpmx-alerts.test.yml}) run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import yaml
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from smtpmx.metrics import Metrics
from tests.e2e import ROOT

RULES = os.path.join(ROOT, "etc", "prometheus", "smtpmx-alerts.yml")
RULE_TESTS = os.path.join(ROOT, "tests", "smtpmx-alerts.test.yml")


def promtool() -> str:
    """
    The path of C{promtool}.

    @raise SkipTest: it is not installed (Debian: C{prometheus}).
    """
    path = shutil.which("promtool")
    if path is None:
        raise SkipTest("promtool is not installed (Debian package prometheus)")
    return path


class AlertRulesTests(SynchronousTestCase):
    """
    The alert rules shipped in C{etc/prometheus/}.
    """

    def rules(self) -> list[dict]:
        """
        Every rule of the file, parsed as YAML.
        """
        with open(RULES, encoding="utf-8") as f:
            document = yaml.safe_load(f)
        return [rule for group in document["groups"] for rule in group["rules"]]

    def test_alerts(self):
        """
        The file has an alert for a growing queue, an old message, failing
        health and a server that cannot be scraped, each with a severity
        and a summary.
        """
        rules = {rule["alert"]: rule for rule in self.rules()}
        self.assertEqual(
            sorted(rules), ["SmtpmxDown", "SmtpmxHealthFailing", "SmtpmxQueueGrowing", "SmtpmxQueueOldMessage"]
        )
        self.assertIn("smtpmx_queue_messages", rules["SmtpmxQueueGrowing"]["expr"])
        self.assertIn("smtpmx_queue_oldest_message_age_seconds > 3600", rules["SmtpmxQueueOldMessage"]["expr"])
        self.assertIn("smtpmx_healthy == 0", rules["SmtpmxHealthFailing"]["expr"])
        for rule in rules.values():
            self.assertIn(rule["labels"]["severity"], ("warning", "critical"))
            self.assertTrue(rule["annotations"]["summary"])

    def test_metricsExist(self):
        """
        Every smtpmx metric an alert watches is one smtpmx exports: a
        renamed family cannot leave an alert that never fires.
        """
        exported = {
            sample.name
            for family in Metrics().registry.collect()
            for sample in family.samples
        }
        for rule in self.rules():
            for name in re.findall(r"\bsmtpmx_\w+", rule["expr"]):
                self.assertIn(name, exported, rule["alert"])

    def test_promtoolCheck(self):
        """
        promtool finds the rules well-formed.
        """
        result = subprocess.run(
            [promtool(), "check", "rules", RULES], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("SUCCESS: 4 rules found", result.stdout)

    def test_promtoolUnitTests(self):
        """
        Each alert fires on the series that should raise it, at the time it
        should, with its summary, and not before (promtool's rule tests).
        """
        result = subprocess.run(
            [promtool(), "test", "rules", RULE_TESTS], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("SUCCESS", result.stdout)
