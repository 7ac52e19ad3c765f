"""Weekly temperature and rainfall from data.csv, plotted into plot.png.

Reads data.csv from the working directory and writes plot.png beside it, as a local
`python3 plot.py` would:

    pyexec --image science --file examples/plot/data.csv --get plot.png examples/plot/plot.py
"""
import matplotlib

matplotlib.use("Agg")  # no display: render to a file

import matplotlib.pyplot as plt
import pandas as pd

data = pd.read_csv("data.csv", parse_dates=["date"])

fig, temperature = plt.subplots(figsize=(8, 4), dpi=100)
temperature.plot(data["date"], data["temperature"], color="tab:red", label="temperature")
temperature.set_ylabel("temperature (°C)")
rainfall = temperature.twinx()
rainfall.bar(data["date"], data["rainfall"], width=5, color="tab:blue", alpha=0.3, label="rainfall")
rainfall.set_ylabel("rainfall (mm)")
temperature.set_title("Weekly temperature and rainfall")
fig.autofmt_xdate()
fig.tight_layout()
fig.savefig("plot.png")

print(f"plot.png: {len(data)} weeks, {data['temperature'].min()}–{data['temperature'].max()} °C")
