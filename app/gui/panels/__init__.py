"""The workflow panel's steps: anatomy, lesion, trajectories, plan, export."""
