"""The dashboard's HTML: Jinja2 templates kept as strings in this module (no template files to package, no
front-end build), autoescaped so a job's request_id or manifest text can never become markup. Each page is its
<main> (what live updates replace) inside one frame; charts are JSON islands drawn by the vendored uPlot."""

from __future__ import annotations

import json
from typing import Any

import jinja2
from markupsafe import Markup

from ..board import ago

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1em}td,th{padding:.2em .6em;text-align:left;border-bottom:1px solid #ddd}
nav a,.filters a{margin-right:.8em}.filters a.on{font-weight:700;color:#222;text-decoration:none}
.wide{overflow-x:auto;max-width:100%}.state-failed,.state-rejected,.bad,.stale{color:#b00}
.state-succeeded,.good{color:#070}.state-waiting{color:#886;font-style:italic}code{font-size:.9em}
footer{margin-top:2em;color:#777;font-size:.85em}pre.log{background:#f6f6f6;padding:.5em;max-height:30em;
overflow:auto;white-space:pre-wrap}.chart{margin:1em 0;min-height:240px}.totals td{font-weight:600}
.strip{display:flex;height:18px;border:1px solid #999;margin:.3em 0 1em}.strip span{display:block;height:100%}
.s-done{background:#3a3}.s-leased{background:#39c}.s-expired{background:#d80}.s-free{background:#ddd}
.legend span{display:inline-block;width:.9em;height:.9em;margin:0 .3em 0 1em;vertical-align:middle}
.preflight td.check{font-size:.85em;vertical-align:top;overflow-wrap:anywhere;min-width:7em}.preflight td.bad{background:#fee;min-width:18em}
"""

# Runs in the page, never on data: charts read JSON islands (<script type="application/json">, which the browser
# does not execute) and live updates replace <main> with HTML the server rendered and escaped.
SCRIPT = """
function bucketrunCharts(root){
  if(typeof uPlot==='undefined')return;
  root.querySelectorAll('.chart').forEach(function(el){
    var island=el.querySelector('script[type="application/json"]');if(!island)return;
    var d=JSON.parse(island.textContent);el.querySelectorAll('.uplot').forEach(function(u){u.remove();});
    var colors=['#1b6ac9','#c9441b','#2a9d3a','#9b34c9','#c99a1b'];
    var series=[{label:d.x_label}].concat(d.series.map(function(s,i){
      return {label:s.label,stroke:colors[i%colors.length],width:2,spanGaps:true};}));
    new uPlot({title:d.title,width:Math.max(320,Math.min(900,el.clientWidth||800)),height:220,series:series,
               scales:{x:{time:!!d.time}}},[d.x].concat(d.series.map(function(s){return s.values;})),el);
  });
}
function bucketrunAgo(s){s=Math.max(0,s);
  if(s>=86400)return Math.round(s/86400)+'d';if(s>=7200)return Math.round(s/3600)+'h';
  if(s>=120)return Math.round(s/60)+'m';return Math.round(s)+'s';}
function bucketrunTick(){  // times since an instant count up here, so the server's HTML stays the same between changes
  var now=Date.now();document.querySelectorAll('time.since').forEach(function(el){
    el.textContent=bucketrunAgo((now-Date.parse(el.getAttribute('datetime')))/1000);});}
function bucketrunSwap(main,html){  // a push must not wipe what the reader is typing: inputs keep value and focus
  var kept={},active=document.activeElement,focused=null,sel=null;
  main.querySelectorAll('input[name]').forEach(function(el){if(el.value!==el.defaultValue)kept[el.name]=el.value;});
  if(active&&active.name&&main.contains(active)){focused=active.name;try{sel=[active.selectionStart,active.selectionEnd];}catch(e){}}
  main.innerHTML=html;
  main.querySelectorAll('input[name]').forEach(function(el){
    if(Object.prototype.hasOwnProperty.call(kept,el.name))el.value=kept[el.name];
    if(el.name===focused){el.focus();if(sel&&sel[0]!==null){try{el.setSelectionRange(sel[0],sel[1]);}catch(e){}}}
  });}
document.addEventListener('DOMContentLoaded',function(){
  bucketrunCharts(document);bucketrunTick();setInterval(bucketrunTick,1000);
  var live=document.body.getAttribute('data-live');if(!live||!window.EventSource)return;
  var source=new EventSource(live);
  source.addEventListener('page',function(e){
    var d=JSON.parse(e.data);var main=document.getElementById('main');
    if(d.main!==undefined){bucketrunSwap(main,d.main);bucketrunCharts(main);bucketrunTick();}
    document.getElementById('calls').textContent=d.calls;
    document.getElementById('per-minute').textContent=d.per_minute;
    document.body.setAttribute('data-updated',d.seq);
  });
});
"""

BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }} - bucketrun</title>
<meta name="viewport" content="width=device-width,initial-scale=1">
{{ links.assets() }}<style>{{ style }}</style><script>{{ script }}</script></head>
<body{% if live %} data-live="{{ live }}"{% endif %}>
<nav><a href="{{ links.jobs() }}">Jobs</a><a href="{{ links.hosts() }}">Hosts</a>{{ links.banner() }}</nav>
<main id="main">{{ main }}</main>
<footer>bucket <code>{{ bucket_url }}</code> &middot; {% if live %}<span id="calls">{{ bucket_calls }}</span> requests to the bucket by this server (<span id="per-minute">{{ per_minute }}</span> in the last minute) &middot; live{% else %}written by a snapshot that read the bucket {{ bucket_calls }} times{% endif %}</footer>
</body></html>"""

JOBS = """<h1>Jobs</h1>
{% if links.searchable %}<form method="get" action="{{ links.jobs() }}">
<input name="q" value="{{ q }}" placeholder="job id prefix">
{% if state %}<input type="hidden" name="state" value="{{ state }}">{% endif %}
{% if kind %}<input type="hidden" name="kind" value="{{ kind }}">{% endif %}
<button>search</button></form>
<p class="filters">state: <a href="{{ link(state=None) }}"{% if not state %} class="on"{% endif %}>all</a>{% for s in states %}<a href="{{ link(state=s) }}"{% if s == state %} class="on"{% endif %}>{{ s }}</a>{% endfor %}</p>
<p class="filters">kind: <a href="{{ link(kind=None) }}"{% if not kind %} class="on"{% endif %}>all</a>{% for k in kinds %}<a href="{{ link(kind=k) }}"{% if k == kind %} class="on"{% endif %}>{{ k }}</a>{% endfor %}</p>{% endif %}
<table><thead><tr><th>id</th><th>kind</th><th>state</th><th>source</th><th>age</th><th>duration</th><th>attempt</th><th>progress</th></tr></thead>
<tbody>
{% for r in rows %}<tr class="job state-{{ r.state }}">
<td>{% if r.job_id and links.job(r.job_id) %}<a href="{{ links.job(r.job_id) }}">{{ r.job_id }}</a>{% elif r.job_id %}{{ r.job_id }}{% else %}(not yet named){% endif %}</td>
<td class="kind">{{ r.kind }}</td><td class="state">{{ r.state }}</td><td>{{ r.source }}</td>
<td>{{ since(r.at) }}</td><td>{% if r.duration_s is none %}-{% elif r.live %}{{ since(r.at) }}{% else %}{{ ago(r.duration_s) }}{% endif %}</td><td>{{ r.attempt }}</td>
<td>{% if r.percent is not none %}<progress max="100" value="{{ '%.0f' % r.percent }}">{{ '%.0f' % r.percent }}%</progress>{% else %}-{% endif %}</td>
</tr>{% else %}<tr><td colspan="8">no jobs{% if q or state or kind %} match{% endif %}</td></tr>{% endfor %}
</tbody></table>"""

JOB = """<h1>Job <code>{{ job_id }}</code></h1>
<p>kind <b>{{ kind }}</b> &middot; state <b class="state-{{ status.state }}">{{ status.state }}</b>
 &middot; attempt {{ status.attempt }} &middot; from {{ source }}</p>
{% if percent is not none %}<p class="progress">progress <progress max="100" value="{{ '%.0f' % percent }}"></progress>
 {{ '%.0f' % percent }}%{% if status.progress and status.progress.stage %} {{ status.progress.stage }}{% endif %}
 {% if status.progress and status.progress.detail %}<span class="detail">{{ status.progress.detail }}</span>{% endif %}</p>
{% endif %}
{% if status.error %}<div class="error"><h2>Error</h2>
<p><b class="error-class">{{ status.error['class'] }}</b>: {{ status.error.message }}</p>
{% if status.error.remedy %}<p>remedy: {{ status.error.remedy }}</p>{% endif %}</div>{% endif %}
{% if status.note %}<p>{{ status.note }}</p>{% endif %}
{% if cost %}<p class="cost">cost: {{ cost }}</p>{% endif %}
{{ section or '' }}
<h2>Timeline</h2>
<table class="timeline"><thead><tr><th>#</th><th>at</th><th>state</th><th>time in state</th><th>attempt</th><th>detail</th></tr></thead><tbody>
{% for t, spent in timeline %}<tr><td>{{ t.seq }}</td><td>{{ t.at }}</td><td class="state-{{ t.state.value }}">{{ t.state.value }}</td>
<td>{% if loop.last and not status.terminal %}{{ since(t.time) }}{% elif spent is not none %}{{ '%.1f' % spent }}s{% else %}-{% endif %}</td><td>{{ t.attempt }}</td><td>{{ summary(t) }}</td></tr>{% endfor %}
</tbody></table>
{% if status.artifacts %}<h2>Artifacts</h2><table class="artifacts"><thead><tr><th>key</th><th>bytes</th><th>sha256</th><th></th></tr></thead><tbody>
{% for a in status.artifacts %}<tr><td>{{ a.key }}</td><td>{{ a.bytes }}</td><td><code class="sha256">{{ a.sha256 }}</code></td>
<td><a href="{{ links.artifact(job_id, loop.index0, a.key) }}">download</a></td></tr>{% endfor %}
</tbody></table>{% endif %}
{% if deliveries %}<h2>Webhook deliveries</h2><table class="deliveries"><thead><tr><th>for</th><th>to</th><th>attempt</th><th>at</th><th>answer</th><th>outcome</th></tr></thead><tbody>
{% for d in deliveries %}{% for a in d.attempts %}<tr><td>#{{ d.seq }} {{ d.state }}</td><td>{{ d.to }}</td><td>{{ a.n }}</td><td>{{ a.at }}</td>
<td>{% if a.status is defined %}HTTP {{ a.status }}{% if a.ms is defined %} in {{ a.ms }} ms{% endif %}{% elif a.error is defined %}{{ a.error }}{% else %}sending{% endif %}</td>
<td>{% if loop.last %}{% if d.delivered %}delivered{% elif d.gave_up %}gave up{% else %}next at {{ d.next_at }}{% endif %}{% endif %}</td></tr>{% endfor %}{% endfor %}
</tbody></table>{% endif %}
{% if log %}<h2>Worker log <small>(attempt {{ log.attempt }}, last {{ log.lines }} lines{% if not status.terminal %}, followed live{% endif %})</small></h2>
<pre class="log">{{ log.text }}</pre>{% endif %}
{% if manifest %}<h2>Manifest</h2><pre>{{ manifest }}</pre>{% endif %}"""

HOSTS = """<h1>Hosts</h1>
{% if not hosts %}<p>no host agents have reported to this bucket; start one with <code>bucketrun agent --labels LABEL</code></p>{% else %}
<table><thead><tr><th>agent</th><th>status</th><th>heartbeat</th><th>labels</th><th>running</th><th>can run</th></tr></thead><tbody>
{% for h in hosts %}<tr class="host"><td>{{ h.agent or '?' }}</td><td>{{ h.status }}</td><td>{{ ago(h.heartbeat_age_s) }} ago</td>
<td>{{ (h.labels or []) | join(', ') }}</td>
<td>{% for t in h.tasks or [] %}{% if links.job(t.job_id) %}<a href="{{ links.job(t.job_id) }}">{{ t.job_id }}</a>{% else %}{{ t.job_id }}{% endif %} #{{ t.attempt }} {{ t.role }}
{%- if not loop.last %}, {% endif %}{% else %}-{% endfor %}</td>
<td>{% if h.kinds is defined %}{{ h.kinds | join(', ') }}{% else %}(not reported){% endif %}</td></tr>{% endfor %}
</tbody></table>{% endif %}"""

NOT_FOUND = """<h1>Not found</h1><p>{{ what }}</p>"""

ENV = jinja2.Environment(loader=jinja2.DictLoader({"base": BASE, "jobs": JOBS, "job": JOB, "hosts": HOSTS,
                                                   "not_found": NOT_FOUND}),
                         autoescape=True, undefined=jinja2.ChainableUndefined)
ENV.globals["ago"] = ago


def since(at) -> Markup:
    """Time since `at`, counted up by the page's script: the HTML names only the instant, so a page whose data
    did not change renders the same bytes (no push, no snapshot rewrite) while its clock still moves."""
    iso = at.isoformat().replace("+00:00", "Z") if hasattr(at, "isoformat") else str(at)
    return Markup('<time class="since" datetime="{0}">{0}</time>').format(iso)


ENV.globals["since"] = since


def render(name: str, **context) -> Markup:
    """One page's <main> content."""
    return Markup(ENV.get_template(name).render(**context))


def frame(title: str, main: Markup, links, live: str | None, **footer) -> str:
    """The whole page around `main`: head, nav, footer; `live` is the event-stream URL, None for a snapshot."""
    return ENV.get_template("base").render(title=title, main=main, links=links, live=live, style=Markup(STYLE),
                                           script=Markup(SCRIPT), **footer)


def chart(title: str, x: list[float], series: list[tuple[str, list[float | None]]], x_label: str = "time",
          time_axis: bool = True) -> Markup:
    """A chart as a JSON island the page's script draws with uPlot; `<` is escaped so no value can close the
    island's <script>."""
    data = {"title": title, "x": x, "x_label": x_label, "time": time_axis,
            "series": [{"label": label, "values": values} for label, values in series]}
    island = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e")
    return Markup('<div class="chart"><script type="application/json">') + Markup(island) + Markup(
        "</script></div>")


def escape(value: Any) -> Markup:
    return Markup.escape(value)
