# Run silently in every Python kernel the code interpreter starts (crates/interpreter), before
# any user code: the display formatters that give E2B's result fields their content.
#   e2b/data          a pandas DataFrame as {column: [values]} (timestamps as ISO strings)
#   application/json  a dict or list as JSON (values JSON cannot hold as strings)
#   e2b/chart         a matplotlib figure as E2B's chart object (line, scatter, bar, pie,
#                     box_and_whisker, superchart, unknown; every key present, nulls explicit)
#   image/png         PIL images shown by .show() or saved by .save(path) are displayed
# Everything is defined inside one function and deleted after, so the user's namespace only
# sees what they define.


def __paddock_setup():
    import json
    import math
    import re
    import sys

    from IPython import get_ipython
    from IPython.core.formatters import JSONFormatter

    ip = get_ipython()
    if ip is None:
        return
    try:
        ip.run_line_magic("colors", "NoColor")
    except Exception:
        pass
    fmt = ip.display_formatter

    def plain(value):
        """`value` as JSON can hold it (NaN and infinities as null, other objects as str)."""
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        iso = getattr(value, "isoformat", None)
        if callable(iso):
            try:
                return iso()
            except Exception:
                pass
        item = getattr(value, "item", None)  # numpy scalars
        if callable(item):
            try:
                return plain(item())
            except Exception:
                pass
        tolist = getattr(value, "tolist", None)  # numpy arrays
        if callable(tolist):
            try:
                return plain(tolist())
            except Exception:
                pass
        return str(value)

    class ByClassFormatter(JSONFormatter):
        """A formatter that recognises its objects by class itself, so nothing can unregister
        it (the inline backend drops every formatter's printer for figures when it starts)."""

        def _check_return(self, r, obj):
            return r

        def convert(self, obj):
            return None

        def __call__(self, obj):
            try:
                return self.convert(obj)
            except Exception:
                return None

    def instance_of(obj, module, name):
        cls = getattr(sys.modules.get(module), name, None)
        return cls is not None and isinstance(obj, cls)

    class DataFormatter(ByClassFormatter):
        format_type = "e2b/data"

        def convert(self, obj):
            if instance_of(obj, "pandas", "DataFrame"):
                return plain(obj.to_dict(orient="list"))
            return None

    def register(formatter):
        fmt.formatters[formatter.format_type] = formatter
        active = getattr(fmt, "active_types", None)
        if isinstance(active, list) and formatter.format_type not in active:
            active.append(formatter.format_type)

    register(DataFormatter(parent=fmt))

    js = fmt.formatters["application/json"]
    js.for_type(dict, lambda o: (plain(o), {"expanded": True}))
    js.for_type(list, lambda o: (plain(o), {"expanded": True}))

    unit_re = re.compile(r"\s\((.*?)\)|\[(.*?)\]")

    def label_and_unit(text):
        if not text:
            return None, None
        m = unit_re.search(text)
        unit = (m.group(1) or m.group(2)) if m else None
        return text, unit

    def round8(x):
        x = float(x)
        return float(f"{x:.8g}") if math.isfinite(x) else None

    def is_grid_line(line):
        xs, ys = line.get_xdata(), line.get_ydata()
        return len(xs) == 2 and (xs[0] == xs[1] or ys[0] == ys[1])

    def point_value(v):
        try:
            import numpy as np

            if isinstance(v, np.datetime64):
                return str(np.datetime_as_string(v, unit="s"))
        except Exception:
            pass
        iso = getattr(v, "isoformat", None)
        if callable(iso):
            return iso()
        return round8(v)

    def axis_info(ax, which):
        axis = ax.xaxis if which == "x" else ax.yaxis
        ticks = list(axis.get_ticklocs())
        labels = [t.get_text() for t in axis.get_ticklabels()]
        scale = axis.get_scale()
        converter = getattr(axis, "get_converter", lambda: getattr(axis, "converter", None))()
        if converter is not None and "date" in type(converter).__name__.lower():
            from matplotlib.dates import num2date

            return [num2date(t).isoformat() for t in ticks], labels, "datetime"
        if scale == "linear" and ticks and all(
            float(t) == i and lab != str(i) for i, (t, lab) in enumerate(zip(ticks, labels))
        ) and len(labels) == len(ticks):
            return [round8(t) for t in ticks], labels, "categorical"
        return [round8(t) for t in ticks], labels, scale

    def two_d(ax, kind):
        x_label, x_unit = label_and_unit(ax.get_xlabel())
        y_label, y_unit = label_and_unit(ax.get_ylabel())
        return {
            "type": kind,
            "title": ax.get_title() or None,
            "x_label": x_label,
            "y_label": y_label,
            "x_unit": x_unit,
            "y_unit": y_unit,
            "elements": [],
        }

    def point_chart(ax, kind):
        c = two_d(ax, kind)
        c["x_ticks"], c["x_tick_labels"], c["x_scale"] = axis_info(ax, "x")
        c["y_ticks"], c["y_tick_labels"], c["y_scale"] = axis_info(ax, "y")
        return c

    def line_label(label, n, prefix):
        if not label or label.startswith("_child") or label.startswith("_container"):
            return f"{prefix} {n}"
        return label

    def box_rect(a):
        """A box of a box plot: a closed rectangle (a Line2D of 5 points, or a PathPatch with
        patch_artist), as (x0, x1, y0, y1); None for anything else."""
        from matplotlib.lines import Line2D
        from matplotlib.patches import PathPatch

        if isinstance(a, PathPatch):
            pts = [(float(x), float(y)) for x, y in a.get_path().vertices]
        elif isinstance(a, Line2D):
            pts = [(float(x), float(y)) for x, y in zip(a.get_xdata(), a.get_ydata())]
            if len(pts) != 5 or pts[0] != pts[-1]:
                return None
        else:
            return None
        xs = sorted({round(x, 9) for x, _ in pts})
        ys = sorted({round(y, 9) for _, y in pts})
        if len(pts) < 4 or len(xs) != 2 or len(ys) != 2:
            return None
        return xs[0], xs[1], ys[0], ys[1]

    def box_chart(ax, children):
        """A vertical box plot (matplotlib's boxplot, pandas', seaborn's) read back from its
        artists: per box its quartiles (the rectangle), median (the line across it), whisker
        ends (the vertical lines at its centre) and outliers (the markers there)."""
        from matplotlib.lines import Line2D

        rects = [(a, r) for a in children for r in [box_rect(a)] if r]
        if not rects:
            return None
        boxes = {id(a) for a, _ in rects}
        lines = [a for a in children if isinstance(a, Line2D) and id(a) not in boxes]
        c = two_d(ax, "box_and_whisker")
        ticks = [float(t) for t in ax.get_xticks()]
        labels = [t.get_text() for t in ax.get_xticklabels()]
        eps = 1e-9
        for i, (_, (x0, x1, q1, q3)) in enumerate(sorted(rects, key=lambda r: r[1][0])):
            mid = (x0 + x1) / 2
            median, low, high, outliers = None, q1, q3, []
            for line in lines:
                xs = [float(v) for v in line.get_xdata()]
                ys = [float(v) for v in line.get_ydata()]
                if not xs:
                    continue
                if line.get_linestyle() in ("None", "none", " ", ""):
                    if all(x0 - eps <= x <= x1 + eps for x in xs):
                        outliers.extend(ys)
                    continue
                if len(xs) != 2:
                    continue
                if ys[0] == ys[1] and abs(min(xs) - x0) < eps and abs(max(xs) - x1) < eps:
                    median = ys[0]
                elif xs[0] == xs[1] and abs(xs[0] - mid) < eps:
                    low, high = min(low, *ys), max(high, *ys)
            label = next((lab for t, lab in zip(ticks, labels) if abs(t - mid) < 1e-6), str(i + 1))
            c["elements"].append({
                "label": label,
                "min": round8(low),
                "first_quartile": round8(q1),
                "median": round8(median) if median is not None else None,
                "third_quartile": round8(q3),
                "max": round8(high),
                "outliers": [round8(y) for y in sorted(outliers)],
            })
        return c

    def chart_of_axes(ax):
        from matplotlib.collections import PathCollection
        from matplotlib.lines import Line2D
        from matplotlib.patches import PathPatch, Rectangle, Wedge
        from matplotlib.text import Text

        children = [a for a in ax.get_children() if a not in (ax.patch,) and not isinstance(a, Text)]
        children = [a for a in children if a in ax.lines or a in ax.collections or a in ax.patches]
        if children and all(isinstance(a, (PathPatch, Line2D)) for a in children):
            box = box_chart(ax, children)
            if box is not None:
                return box
        if children and all(isinstance(a, Line2D) for a in children):
            c = point_chart(ax, "line")
            for i, line in enumerate(l for l in ax.get_lines() if not is_grid_line(l)):
                xs, ys = line.get_xdata(), line.get_ydata()
                c["elements"].append({
                    "label": line_label(line.get_label(), i, "Line"),
                    "points": [[point_value(x), point_value(y)] for x, y in zip(xs, ys)],
                })
            return c
        rest = [a for a in children if not (isinstance(a, Line2D) and is_grid_line(a))]
        if rest and all(isinstance(a, PathCollection) for a in rest):
            c = point_chart(ax, "scatter")
            for i, coll in enumerate(ax.collections):
                c["elements"].append({
                    "label": line_label(coll.get_label(), i, "Scatter"),
                    "points": [[round8(x), round8(y)] for x, y in coll.get_offsets()],
                })
            return c
        if children and all(isinstance(a, Wedge) for a in children):
            return {
                "type": "pie",
                "title": ax.get_title() or None,
                "elements": [
                    {"label": w.get_label(), "angle": round8(abs(w.theta2 - w.theta1)), "radius": round8(w.r)}
                    for w in children
                ],
            }
        if children and all(isinstance(a, Rectangle) for a in children):
            c = two_d(ax, "bar")
            for i, container in enumerate(ax.containers):
                group = line_label(container.get_label(), i, "Group")
                heights = [r.get_height() for r in container]
                if heights and len(set(heights)) == 1 and len(heights) > 1:
                    labels = [t.get_text() for t in ax.get_yticklabels()]
                    values = [r.get_width() for r in container]
                    c["x_label"], c["y_label"] = c["y_label"], c["x_label"]
                    c["x_unit"], c["y_unit"] = c["y_unit"], c["x_unit"]
                else:
                    labels = [t.get_text() for t in ax.get_xticklabels()]
                    values = heights
                for label, value in zip(labels, values):
                    c["elements"].append({"label": label, "group": group, "value": round8(value)})
            return c
        if children and all(isinstance(a, (PathPatch, Line2D)) for a in children):
            return two_d(ax, "box_and_whisker")
        return {"type": "unknown", "title": ax.get_title() or None, "elements": []}

    def chart_of_figure(fig):
        try:
            axes = [ax for ax in fig.get_axes()]
            if not axes or not any(ax.has_data() for ax in axes):
                return {}
            if len(axes) > 1:
                suptitle = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) else ""
                return {"type": "superchart", "title": suptitle, "elements": [chart_of_axes(ax) for ax in axes]}
            return chart_of_axes(axes[0])
        except Exception:
            return {}

    class ChartFormatter(ByClassFormatter):
        format_type = "e2b/chart"

        def convert(self, obj):
            if instance_of(obj, "matplotlib.figure", "Figure"):
                return chart_of_figure(obj)
            return None

    register(ChartFormatter(parent=fmt))

    # PIL: .show() and .save(path) display the image in the execution's results.
    try:
        from PIL import Image, ImageShow
        from IPython.display import display

        class Viewer(ImageShow.Viewer):
            def show(self, image, **options):
                display(image)
                return 1

        ImageShow._viewers.insert(0, Viewer())
        save = Image.Image.save

        def save_and_show(self, fp, *args, **kwargs):
            result = save(self, fp, *args, **kwargs)
            if isinstance(fp, str):
                display(self)
            return result

        Image.Image.save = save_and_show
    except Exception:
        pass


__paddock_setup()
del __paddock_setup
