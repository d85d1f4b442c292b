"""One kit per framework (``frameworks/<framework>/``) and what the problems share.

:mod:`.kit` is the protocol a kit meets; :mod:`.net` describes the networks the problems
train (numpy weights); :mod:`.optimizers` their optimizer hyper-parameters.
"""
