"""The dashboard's HTML: Jinja2 templates kept as strings in this module (no template files to package, no
front-end build), autoescaped so a job's request_id or manifest text can never become markup."""

from __future__ import annotations

import jinja2

from .data import ago

BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{% block title %}bucketrun{% endblock %}</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{padding:.2em .6em;text-align:left;border-bottom:1px solid #ddd}
nav a,.filters a{margin-right:.8em}.state-failed,.state-rejected{color:#b00}.state-succeeded{color:#070}
.state-waiting{color:#886;font-style:italic}code{font-size:.9em}footer{margin-top:2em;color:#777;font-size:.85em}
</style></head><body>
<nav><a href="/">Jobs</a><a href="/hosts">Hosts</a></nav>
{% block body %}{% endblock %}
<footer>bucket <code>{{ bucket_url }}</code> &middot; {{ bucket_calls }} requests to the bucket by this server</footer>
</body></html>"""

JOBS = """{% extends "base" %}{% block title %}jobs - bucketrun{% endblock %}{% block body %}
<h1>Jobs</h1>
<form method="get" action="/">
<input name="q" value="{{ q }}" placeholder="job id prefix">
{% if state %}<input type="hidden" name="state" value="{{ state }}">{% endif %}
{% if kind %}<input type="hidden" name="kind" value="{{ kind }}">{% endif %}
<button>search</button></form>
<p class="filters">state: <a href="{{ link(state=None) }}">all</a>{% for s in states %}<a href="{{ link(state=s) }}">{{ s }}</a>{% endfor %}</p>
<p class="filters">kind: <a href="{{ link(kind=None) }}">all</a>{% for k in kinds %}<a href="{{ link(kind=k) }}">{{ k }}</a>{% endfor %}</p>
<table><thead><tr><th>id</th><th>kind</th><th>state</th><th>source</th><th>age</th><th>duration</th><th>attempt</th><th>progress</th></tr></thead>
<tbody>
{% for r in rows %}<tr class="job state-{{ r.state }}">
<td>{% if r.job_id %}<a href="/jobs/{{ r.job_id }}">{{ r.job_id }}</a>{% else %}(not yet named){% endif %}</td>
<td class="kind">{{ r.kind }}</td><td class="state">{{ r.state }}</td><td>{{ r.source }}</td>
<td>{{ ago(r.age_s) }}</td><td>{{ ago(r.duration_s) }}</td><td>{{ r.attempt }}</td>
<td>{% if r.percent is not none %}<progress max="100" value="{{ '%.0f' % r.percent }}">{{ '%.0f' % r.percent }}%</progress>{% else %}-{% endif %}</td>
</tr>{% else %}<tr><td colspan="8">no jobs{% if q or state or kind %} match{% endif %}</td></tr>{% endfor %}
</tbody></table>{% endblock %}"""

JOB = """{% extends "base" %}{% block title %}{{ job_id }} - bucketrun{% endblock %}{% block body %}
<h1>Job <code>{{ job_id }}</code></h1>
<p>kind <b>{{ kind }}</b> &middot; state <b class="state-{{ status.state }}">{{ status.state }}</b>
 &middot; attempt {{ status.attempt }} &middot; from {{ source }}</p>
{% if percent is not none %}<p>progress <progress max="100" value="{{ '%.0f' % percent }}"></progress>
 {{ '%.0f' % percent }}%{% if status.progress and status.progress.stage %} {{ status.progress.stage }}{% endif %}</p>
{% endif %}
{% if status.error %}<div class="error"><h2>Error</h2>
<p><b class="error-class">{{ status.error['class'] }}</b>: {{ status.error.message }}</p>
{% if status.error.remedy %}<p>remedy: {{ status.error.remedy }}</p>{% endif %}</div>{% endif %}
{% if status.note %}<p>{{ status.note }}</p>{% endif %}
<h2>Timeline</h2>
<table class="timeline"><thead><tr><th>#</th><th>at</th><th>state</th><th>time in state</th><th>attempt</th><th>detail</th></tr></thead><tbody>
{% for t, spent in timeline %}<tr><td>{{ t.seq }}</td><td>{{ t.at }}</td><td class="state-{{ t.state.value }}">{{ t.state.value }}</td>
<td>{% if spent is not none %}{{ '%.1f' % spent }}s{% else %}-{% endif %}</td><td>{{ t.attempt }}</td><td>{{ summary(t) }}</td></tr>{% endfor %}
</tbody></table>
{% if status.artifacts %}<h2>Artifacts</h2><table class="artifacts"><thead><tr><th>key</th><th>bytes</th><th>sha256</th><th></th></tr></thead><tbody>
{% for a in status.artifacts %}<tr><td>{{ a.key }}</td><td>{{ a.bytes }}</td><td><code class="sha256">{{ a.sha256 }}</code></td>
<td><a href="/jobs/{{ job_id }}/artifacts/{{ loop.index0 }}">download</a></td></tr>{% endfor %}
</tbody></table>{% endif %}
{% if manifest %}<h2>Manifest</h2><pre>{{ manifest }}</pre>{% endif %}
{% endblock %}"""

HOSTS = """{% extends "base" %}{% block title %}hosts - bucketrun{% endblock %}{% block body %}
<h1>Hosts</h1>
{% if not hosts %}<p>no host agents have reported to this bucket; start one with <code>bucketrun agent --labels LABEL</code></p>{% else %}
<table><thead><tr><th>agent</th><th>status</th><th>heartbeat</th><th>labels</th><th>running</th><th>can run</th></tr></thead><tbody>
{% for h in hosts %}<tr class="host"><td>{{ h.agent or '?' }}</td><td>{{ h.status }}</td><td>{{ ago(h.heartbeat_age_s) }} ago</td>
<td>{{ (h.labels or []) | join(', ') }}</td>
<td>{% for t in h.tasks or [] %}<a href="/jobs/{{ t.job_id }}">{{ t.job_id }}</a> #{{ t.attempt }} {{ t.role }}
{%- if not loop.last %}, {% endif %}{% else %}-{% endfor %}</td>
<td>{% if h.kinds is defined %}{{ h.kinds | join(', ') }}{% else %}(not reported){% endif %}</td></tr>{% endfor %}
</tbody></table>{% endif %}{% endblock %}"""

NOT_FOUND = """{% extends "base" %}{% block body %}<h1>Not found</h1><p>{{ what }}</p>{% endblock %}"""

ENV = jinja2.Environment(loader=jinja2.DictLoader({"base": BASE, "jobs": JOBS, "job": JOB, "hosts": HOSTS,
                                                   "not_found": NOT_FOUND}),
                         autoescape=True, undefined=jinja2.ChainableUndefined)
ENV.globals["ago"] = ago


def render(name: str, **context) -> str:
    return ENV.get_template(name).render(**context)
