"""`dreamfusion serve`: a Gradio web app over dreamfusion.api.

- server.py builds the page (`build_app`) and serves it (`serve`);
- jobs.py runs one API call in a worker thread and turns its progress events into page updates.

One optimisation runs at a time (a CPU machine has no room for two); Gradio's queue holds the others and
shows each waiting user their place. Every run gets its own folder under the runs folder, claimed
atomically, so two users submitting at once never share or overwrite one.
"""
